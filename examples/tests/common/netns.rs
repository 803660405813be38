//! Network namespaces for the tests that need a real network: one namespace per host, joined by
//! a bridge in a "switch" namespace. Needs root and `ip` (iproute2).

use std::process::Command;

pub fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip").args(args).output().map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// The namespaces of one run, deleted when dropped (after the members are killed).
pub struct Net {
    pub switch: String,
    pub members: Vec<String>,
}

impl Net {
    pub fn new(n: usize) -> Result<Self, String> {
        let pid = std::process::id();
        let net = Net { switch: format!("drsw{pid}"), members: (0..n).map(|k| format!("drm{k}p{pid}")).collect() };
        ip(&["netns", "add", &net.switch])?;
        for m in &net.members {
            ip(&["netns", "add", m])?;
        }
        let sw = net.switch.as_str();
        ip(&["-n", sw, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", sw, "link", "set", "br0", "up"])?;
        for (k, m) in net.members.iter().enumerate() {
            let port = format!("s{k}");
            ip(&["-n", sw, "link", "add", &port, "type", "veth", "peer", "name", "v0", "netns", m])?;
            ip(&["-n", sw, "link", "set", &port, "master", "br0"])?;
            ip(&["-n", sw, "link", "set", &port, "up"])?;
            ip(&["-n", m, "addr", "add", &format!("{}/24", Self::addr(k)), "dev", "v0"])?;
            ip(&["-n", m, "link", "set", "v0", "up"])?;
            ip(&["-n", m, "link", "set", "lo", "up"])?;
        }
        Ok(net)
    }

    pub fn addr(k: usize) -> String {
        format!("10.77.0.{}", k + 1)
    }

    /// Cuts member `k` off: its port on the switch goes down.
    #[allow(dead_code)]
    pub fn isolate(&self, k: usize) -> Result<(), String> {
        ip(&["-n", &self.switch, "link", "set", &format!("s{k}"), "down"])
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for n in self.members.iter().chain([&self.switch]) {
            let _ = ip(&["netns", "del", n]);
        }
    }
}

pub fn skip_reason() -> Option<String> {
    let uid = Command::new("id").arg("-u").output().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    if uid.ok().as_deref() != Some("0") {
        return Some("not root (network namespaces need it)".into());
    }
    match Command::new("ip").arg("-V").output() {
        Ok(o) if o.status.success() => None,
        _ => Some("`ip` (iproute2) is not installed".into()),
    }
}
