//! `kv status`: members' state as a table, read from their metrics listeners (the Prometheus
//! text a member serves with `metrics_listen`), once or refreshed with rates (`--watch`).
//!
//! Nothing here is specific to the store: any derecho member with a metrics listener can be
//! shown.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use derecho::driver::resolve_address;

/// One sample: a metric's name, its labels, its value.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// The name (`derecho_view_id`).
    pub name: String,
    /// The labels, by name.
    pub labels: BTreeMap<String, String>,
    /// The value.
    pub value: f64,
}

/// Parses the samples of a Prometheus text exposition (comments and malformed lines skipped),
/// and the `# derecho waiting: ...` comment a member adds while it waits.
pub fn parse(text: &str) -> (Vec<Sample>, Option<String>) {
    let mut samples = Vec::new();
    let mut waiting = None;
    for line in text.lines() {
        if let Some(w) = line.strip_prefix("# derecho waiting: ") {
            waiting = Some(w.to_string());
            continue;
        }
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let (series, value) = match line.rsplit_once(' ') {
            Some(x) => x,
            None => continue,
        };
        let Ok(value) = value.trim().parse::<f64>() else { continue };
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => {
                let mut labels = BTreeMap::new();
                for pair in rest.trim_end_matches('}').split(',').filter(|p| !p.is_empty()) {
                    if let Some((k, v)) = pair.split_once('=') {
                        labels.insert(k.trim().to_string(), v.trim().trim_matches('"').to_string());
                    }
                }
                (name.to_string(), labels)
            }
            None => (series.to_string(), BTreeMap::new()),
        };
        samples.push(Sample { name, labels, value });
    }
    (samples, waiting)
}

/// One member's state, as the table shows it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Row {
    /// The metrics address.
    pub address: String,
    /// The member id.
    pub member: Option<u64>,
    /// Its stage.
    pub stage: String,
    /// Its view and the view's size.
    pub view: Option<(i64, u64)>,
    /// Its rank.
    pub rank: Option<i64>,
    /// Per shard (`subgroup/shard`): delivered, and the frontiers durable here and everywhere.
    pub shards: BTreeMap<String, ShardRow>,
    /// What it waits for.
    pub waiting: Option<String>,
    /// Why it could not be read.
    pub error: Option<String>,
}

/// One shard of a [`Row`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ShardRow {
    /// Messages delivered.
    pub delivered: u64,
    /// Deliveries per second since the previous read (with `--watch`).
    pub rate: Option<f64>,
    /// `vVIEW.SEQ` durable here.
    pub here: Option<String>,
    /// `vVIEW.SEQ` durable at every member.
    pub everywhere: Option<String>,
}

/// The row of a member's metrics text.
pub fn row(address: &str, text: &str) -> Row {
    let (samples, waiting) = parse(text);
    let one = |name: &str| samples.iter().find(|s| s.name == name).map(|s| s.value);
    let mut r = Row { address: address.to_string(), waiting, ..Row::default() };
    r.member = one("derecho_member_id").map(|v| v as u64);
    r.stage = samples
        .iter()
        .find(|s| s.name == "derecho_stage" && s.value == 1.0)
        .and_then(|s| s.labels.get("stage").cloned())
        .unwrap_or_else(|| "?".into());
    r.view = one("derecho_view_id")
        .filter(|v| *v >= 0.0)
        .map(|v| (v as i64, one("derecho_view_members").unwrap_or(0.0) as u64));
    r.rank = one("derecho_rank").filter(|v| *v >= 0.0).map(|v| v as i64);
    for s in &samples {
        let (Some(sg), Some(sh)) = (s.labels.get("subgroup"), s.labels.get("shard")) else { continue };
        let e = r.shards.entry(format!("{sg}/{sh}")).or_default();
        let version = || format!("v{}.{}", s.labels.get("view").map_or("?", String::as_str), s.value as u64);
        match s.name.as_str() {
            "derecho_shard_delivered_total" => e.delivered = s.value as u64,
            "derecho_shard_persisted_here_seq" => e.here = Some(version()),
            "derecho_shard_persisted_everywhere_seq" => e.everywhere = Some(version()),
            _ => {}
        }
    }
    r
}

/// Reads `GET /metrics` from `address` (bounded: 2 s to connect, 2 s to answer).
pub fn scrape(address: &str) -> Result<String, String> {
    let addr = resolve_address(address)?;
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| format!("{address}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(2))).map_err(|e| e.to_string())?;
    s.write_all(format!("GET /metrics HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n").as_bytes())
        .map_err(|e| format!("{address}: {e}"))?;
    let mut response = String::new();
    s.read_to_string(&mut response).map_err(|e| format!("{address}: {e}"))?;
    let (head, body) = response.split_once("\r\n\r\n").ok_or_else(|| format!("{address}: not an HTTP answer"))?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(format!("{address}: {}", head.lines().next().unwrap_or("no status line")));
    }
    Ok(body.to_string())
}

/// The table of `rows`.
pub fn render(rows: &[Row]) -> String {
    let mut out = format!(
        "{:<22} {:>6} {:<10} {:>10} {:>4}  {:<6} {:>10} {:>9} {:>11} {:>11}\n",
        "ADDRESS", "MEMBER", "STAGE", "VIEW", "RANK", "SHARD", "DELIVERED", "RATE/S", "DURABLE", "EVERYWHERE"
    );
    for r in rows {
        let member = r.member.map_or("?".into(), |m| m.to_string());
        let view = r.view.map_or("-".into(), |(v, n)| format!("{v} ({n})"));
        let rank = r.rank.map_or("-".into(), |x| x.to_string());
        if let Some(e) = &r.error {
            out.push_str(&format!("{:<22} {:>6} {e}\n", r.address, "?"));
            continue;
        }
        let lead = format!("{:<22} {member:>6} {:<10} {view:>10} {rank:>4}", r.address, r.stage);
        if r.shards.is_empty() {
            out.push_str(&format!("{lead}  -\n"));
        }
        for (i, (name, s)) in r.shards.iter().enumerate() {
            let lead = if i == 0 { lead.clone() } else { " ".repeat(lead.chars().count()) };
            out.push_str(&format!(
                "{lead}  {name:<6} {:>10} {:>9} {:>11} {:>11}\n",
                s.delivered,
                s.rate.map_or("-".into(), |x| format!("{x:.0}")),
                s.here.as_deref().unwrap_or("-"),
                s.everywhere.as_deref().unwrap_or("-"),
            ));
        }
        if let Some(w) = &r.waiting {
            out.push_str(&format!("{:<22} waiting: {w}\n", ""));
        }
    }
    out
}

/// `kv status`: prints the table once, or refreshes it every `interval` with `watch`. Fails
/// (exit code 1) if no member could be read.
pub fn run(addresses: &[String], watch: bool, interval: Duration) -> Result<ExitCode, String> {
    let mut previous: Option<(Instant, Vec<Row>)> = None;
    loop {
        let now = Instant::now();
        let mut rows: Vec<Row> = addresses
            .iter()
            .map(|a| match scrape(a) {
                Ok(text) => row(a, &text),
                Err(e) => Row { address: a.clone(), error: Some(e), ..Row::default() },
            })
            .collect();
        if let Some((then, before)) = &previous {
            let secs = now.duration_since(*then).as_secs_f64().max(1e-3);
            for (r, b) in rows.iter_mut().zip(before) {
                for (name, s) in r.shards.iter_mut() {
                    if let Some(old) = b.shards.get(name) {
                        s.rate = Some(s.delivered.saturating_sub(old.delivered) as f64 / secs);
                    }
                }
            }
        }
        let table = render(&rows);
        if !watch {
            print!("{table}");
            if rows.iter().all(|r| r.error.is_some()) {
                return Err("no member's metrics could be read".into());
            }
            return Ok(ExitCode::SUCCESS);
        }
        // Clear the screen and redraw.
        print!("\x1b[2J\x1b[H{table}");
        let _ = std::io::stdout().flush();
        previous = Some((now, rows));
        std::thread::sleep(interval);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# derecho waiting: 1 of the 3 members of view 4 are back; a majority is needed
# HELP derecho_member_id This member's node id.
# TYPE derecho_member_id gauge
derecho_member_id 2
derecho_stage{stage=\"joining\"} 0
derecho_stage{stage=\"running\"} 1
derecho_view_id 7
derecho_view_members 3
derecho_rank 1
derecho_shard_delivered_total{subgroup=\"0\",shard=\"1\"} 1234
derecho_shard_persisted_here_seq{subgroup=\"0\",shard=\"1\",view=\"7\"} 40
derecho_shard_persisted_everywhere_seq{subgroup=\"0\",shard=\"1\",view=\"6\"} 12
# EOF
";

    #[test]
    fn a_members_text_becomes_a_row_and_a_table() {
        let r = row("127.0.0.1:9100", TEXT);
        assert_eq!(r.member, Some(2));
        assert_eq!(r.stage, "running");
        assert_eq!(r.view, Some((7, 3)));
        assert_eq!(r.rank, Some(1));
        let s = &r.shards["0/1"];
        assert_eq!((s.delivered, s.here.as_deref(), s.everywhere.as_deref()), (1234, Some("v7.40"), Some("v6.12")));
        assert_eq!(r.waiting.as_deref(), Some("1 of the 3 members of view 4 are back; a majority is needed"));
        let table = render(&[r, Row { address: "x:1".into(), error: Some("x:1: refused".into()), ..Row::default() }]);
        assert!(table.contains("running") && table.contains("v7.40") && table.contains("x:1: refused"), "{table}");
        assert!(table.contains("waiting: 1 of the 3"), "{table}");
    }
}
