//! Total restart with real processes (PROTOCOLS §4.1). Three `kv_member` processes log the
//! key-value store on disk while four writers in each put unique values; each put whose version
//! is reported persisted at every member goes to its member's history as `durable`. All three are
//! killed with SIGKILL under that load, then restarted in another order, with another restart
//! leader, and the last one back only once the group has resumed (it joins the running group).
//!
//! Then: every put reported durable is in every restarted replica at its version, the replicas
//! agree, the group takes new calls, and every log on disk reads back whole (checksums valid,
//! versions going forward), the logs of the restart view starting from the state they were
//! restarted with.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use derecho::Builder;
use derecho::persist::DurableLog;
use derecho_tests::kv_process::Member;

/// Durable puts each member must have reported before the kill.
const DURABLE_BEFORE_KILL: usize = 300;

fn spawn(me: u32, contact: Option<&str>, history: &Path, dir: &Path) -> Member {
    let mut args: Vec<OsString> = vec!["--seed".into(), "7".into(), "--ops".into(), "20".into()];
    args.extend(["--history".into(), history.into(), "--persist".into(), dir.into()]);
    if let Some(c) = contact {
        args.extend(["--contact".into(), c.into()]);
    }
    Member::spawn(env!("CARGO_BIN_EXE_kv_member"), me, &args)
}

fn durable_lines(file: &Path) -> usize {
    std::fs::read_to_string(file).map_or(0, |t| t.lines().filter(|l| l.starts_with("durable ")).count())
}

/// Removes a directory when dropped (also when the test panics).
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Every log in `dir` reads back whole, its versions going forward; the logs started in
/// `restart_view` or later begin with a state record.
fn check_logs(dir: &Path, restart_view: u32) {
    let logs: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("a log directory")
        .map(|e| e.expect("an entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    // One shard: once the restart's log (or a later joiner's) is durable, the older ones go.
    assert_eq!(logs.len(), 1, "older logs are removed once a newer one's state is durable: {logs:?}");
    let mut restarted = 0;
    Builder::new().build().unwrap().block_on(async {
        for path in &logs {
            let (_, found) = DurableLog::open(path).await.expect("the log opens");
            assert_eq!(found.damage, None, "{}: damaged after a clean stop", path.display());
            assert!(
                found.records.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1),
                "{}: versions or times go back",
                path.display()
            );
            let name = path.file_name().unwrap().to_str().unwrap();
            let view: u32 = name.rsplit_once("-v").unwrap().1.trim_end_matches(".log").parse().unwrap();
            if view >= restart_view {
                restarted += 1;
                let first = found.records.first().expect("a restarted log holds its state");
                assert_eq!(first.2.first(), Some(&0), "{}: does not start with a state", path.display());
            }
        }
    });
    assert!(restarted >= 1, "no log of the restart in {}", dir.display());
}

#[test]
fn a_group_killed_under_load_restarts_with_every_durable_put() {
    let tmp = std::env::temp_dir().join(format!("derecho-kv-restart-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).expect("a temporary directory");
    let _tmp = RemoveOnDrop(tmp.clone());
    let dirs: Vec<PathBuf> = (0..3).map(|i| tmp.join(format!("logs-{i}"))).collect();
    let before: Vec<PathBuf> = (0..3).map(|i| tmp.join(format!("before-{i}.history"))).collect();
    let after: Vec<PathBuf> = (0..3).map(|i| tmp.join(format!("after-{i}.history"))).collect();

    // First run: member 0 leads; every member writes until the kill.
    let mut members = vec![spawn(0, None, &before[0], &dirs[0])];
    let contact = members[0].expect("listening ")["listening ".len()..].to_string();
    for i in 1..3 {
        members.push(spawn(i, Some(&contact), &before[i as usize], &dirs[i as usize]));
    }
    for m in &members {
        m.expect("ready");
    }
    for m in &mut members {
        m.tell("load");
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while before.iter().any(|f| durable_lines(f) < DURABLE_BEFORE_KILL) {
        let counts: Vec<usize> = before.iter().map(|f| durable_lines(f)).collect();
        assert!(Instant::now() < deadline, "too few durable puts within 60 s: {counts:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    for i in [2, 0, 1] {
        members[i].kill();
    }
    drop(members);
    let durable: usize = before.iter().map(|f| durable_lines(f)).sum();
    // The last version of each member's log (what recovery will read: a torn tail is cut).
    let logged: Vec<u64> = dirs.iter().map(|d| last_logged(d)).collect();

    // Restart: member 2 leads, then member 0, then member 1 a little later. Members 2 and 0
    // are a majority of the last view; member 1 is in the restart view only if the restart
    // needs it (it may have acknowledged a view with member 0 alone before the kill) or if it
    // came back in time, and joins the running group otherwise.
    let mut leader = spawn(2, None, &after[2], &dirs[2]);
    let contact = leader.expect("listening ")["listening ".len()..].to_string();
    let mut second = spawn(0, Some(&contact), &after[0], &dirs[0]);
    std::thread::sleep(Duration::from_millis(50));
    let mut last = spawn(1, Some(&contact), &after[1], &dirs[1]);
    let restarted = leader.expect("started in view ");
    let (restart_view, restart_members) =
        restarted["started in view ".len()..].split_once(" members ").expect("a view and its members");
    let restart_view: u32 = restart_view.parse().expect("a view id");
    let restart_members: Vec<usize> = restart_members.split(',').map(|m| m.parse().expect("a member")).collect();
    assert!(restart_members.contains(&0) && restart_members.contains(&2), "{restarted}");
    // The longest log of the members that restarted the group.
    let longest = restart_members.iter().map(|&m| logged[m]).max().expect("members");
    let mut members = [&mut leader, &mut second, &mut last];
    for m in members.iter() {
        m.expect("ready");
    }
    let files: Vec<String> = before.iter().map(|f| f.display().to_string()).collect();
    let mut digests = Vec::new();
    for m in members.iter_mut() {
        m.tell(&format!("verify {}", files.join(" ")));
        let answer = m.expect_any(&["verified ", "lost "]);
        let verified: usize = answer.strip_prefix("verified ").unwrap_or_else(|| panic!("{answer}")).parse().unwrap();
        assert_eq!(verified, durable, "every durable put is checked");
        m.tell("digest");
        digests.push(m.expect("digest "));
    }
    assert!(digests.windows(2).all(|w| w[0] == w[1]), "the replicas differ after the restart: {digests:#?}");
    // The state is the longest log's: its last put is some key's latest value.
    let newest =
        digests[0].split(' ').skip(1).filter_map(|w| w.split_once('@')?.1.split_once('=')?.0.parse::<u64>().ok()).max();
    assert_eq!(newest, Some(longest), "the restarted state ends elsewhere than the longest log: {}", digests[0]);
    eprintln!("{durable} durable puts before the kill, all present after the restart");
    // The group takes new calls.
    for m in members.iter_mut() {
        m.tell("phase 1");
    }
    for m in members.iter() {
        m.expect("phase 1 done");
    }
    for m in members.iter_mut() {
        m.finish();
    }
    for d in &dirs {
        check_logs(d, restart_view);
    }
}

/// The member started without a contact is killed and started again with its exact command
/// while the others run on: it finds its saved view, asks that view's members whether a group
/// runs, and rejoins it (a restart leader waiting for a quorum that never comes is the bug this
/// pins down), with every put durable before the kill in its replica.
#[test]
fn the_first_member_rerun_with_its_own_command_rejoins_the_running_group() {
    let tmp = std::env::temp_dir().join(format!("derecho-kv-rerun-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).expect("a temporary directory");
    let _tmp = RemoveOnDrop(tmp.clone());
    let dirs: Vec<PathBuf> = (0..3).map(|i| tmp.join(format!("logs-{i}"))).collect();
    let histories: Vec<PathBuf> = (0..3).map(|i| tmp.join(format!("{i}.history"))).collect();
    let mut members = vec![spawn(0, None, &histories[0], &dirs[0])];
    let contact = members[0].expect("listening ")["listening ".len()..].to_string();
    for i in 1..3 {
        members.push(spawn(i, Some(&contact), &histories[i as usize], &dirs[i as usize]));
    }
    for m in &mut members {
        m.expect("ready");
        m.tell("load");
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while histories.iter().any(|f| durable_lines(f) < 50) {
        assert!(Instant::now() < deadline, "too few durable puts within 60 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    members[0].kill();
    let durable: usize = histories.iter().map(|f| durable_lines(f)).sum();
    let files: Vec<String> = histories.iter().map(|f| f.display().to_string()).collect();

    // The exact command again: no contact.
    members[0] = spawn(0, None, &histories[0], &dirs[0]);
    let started = members[0].expect("started in view ");
    let members_of_view = started.split_once(" members ").expect("a view and its members").1;
    assert!(members_of_view.split(',').any(|m| m == "1"), "member 0 started a group of its own: {started}");
    members[0].expect("ready");
    members[0].tell(&format!("verify {}", files.join(" ")));
    let answer = members[0].expect_any(&["verified ", "lost "]);
    let verified: usize = answer.strip_prefix("verified ").unwrap_or_else(|| panic!("{answer}")).parse().unwrap();
    assert!(verified >= durable, "{verified} durable puts checked, {durable} before the kill");
    // The group takes new calls at every member.
    for m in &mut members {
        m.tell("phase 1");
    }
    for m in &members {
        m.expect("phase 1 done");
    }
    for m in &mut members {
        m.finish();
    }
}

/// The last version in the newest non-empty log of `dir`.
fn last_logged(dir: &Path) -> u64 {
    let mut logs: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("a log directory")
        .map(|e| e.expect("an entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    let view = |p: &PathBuf| -> u32 {
        let name = p.file_name().unwrap().to_str().unwrap();
        name.rsplit_once("-v").unwrap().1.trim_end_matches(".log").parse().unwrap()
    };
    logs.sort_by_key(|p| std::cmp::Reverse(view(p)));
    Builder::new().build().unwrap().block_on(async {
        for p in &logs {
            let (_, found) = DurableLog::open(p).await.expect("the log opens");
            if let Some(last) = found.records.last() {
                return last.0;
            }
        }
        panic!("no record in {}", dir.display())
    })
}
