//! Running membership simulations ([`GroupSim`]) under every membership checker, and drawing
//! random fault scenarios from a seed.
//!
//! A failing seed panics with the line that replays it:
//! `SIM_SEED=<seed> cargo test -p derecho-tests --test sim_membership <test>`; `SIM_TRACE=1` adds
//! the whole trace to the report.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, Instant};

use derecho::protocol::{GroupLayout, NodeId, Policy, SubgroupSpec, Time};
use derecho::sim::{GroupConfig, GroupSim, Plan, SimRng, StepKind};

use crate::checkers::membership::GroupCheckers;
use crate::simulation::{SEED_VAR, SEEDS_VAR, clock_seed, full_trace_wanted, parse_u64, replay_seed};

const MS: u64 = 1_000_000;

/// Runs `config` under every checker. `expect_live`: the faults heal and a majority survives,
/// so the run must end settled.
///
/// # Errors
///
/// A report naming the failed properties, the seed's replay command and the trace tail.
pub fn run_group(test: &str, mut config: GroupConfig, expect_live: bool) -> Result<GroupSim, String> {
    config.record_trace = full_trace_wanted();
    let seed = config.seed;
    let replay = format!("{SEED_VAR}={seed} cargo test -p derecho-tests --test sim_membership {test}");
    let mut holder: Option<GroupSim> = None;
    let result = catch_unwind(AssertUnwindSafe(|| {
        let mut sim = GroupSim::new(config.clone());
        let mut checkers = GroupCheckers::all();
        let outcome = sim.run(|sim| checkers.check(sim));
        let verdict = match outcome {
            Err(f) => Err(vec![f.to_string()]),
            Ok(()) => checkers.finish(&sim, expect_live),
        };
        holder = Some(sim);
        verdict
    }));
    let trace = |sim: Option<&GroupSim>| -> String {
        let Some(sim) = sim else { return String::new() };
        match sim.trace().lines() {
            Some(lines) => lines.join("\n"),
            None => sim.trace().tail().collect::<Vec<_>>().join("\n"),
        }
    };
    match result {
        Ok(Ok(())) => Ok(holder.expect("the run finished")),
        Ok(Err(errors)) => Err(format!(
            "{test}: seed {seed} failed:\n  {}\nplan: {:?}\nreplay: {replay}\ntrace:\n{}",
            errors.join("\n  "),
            config.plan,
            trace(holder.as_ref())
        )),
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_string()))
                .unwrap_or_else(|| "a panic".into());
            Err(format!("{test}: seed {seed} panicked: {message}\nplan: {:?}\nreplay: {replay}", config.plan))
        }
    }
}

/// Draws a scenario: 3 to 9 members sending, then one to five events among: crashes (at a
/// time, or of the leader or another member on a named step of a view change), graceful
/// leaves (several at once, the leader among them half the time: a takeover), partitions of
/// one member or of a minority of several (healed, the members back under new ids), one-way
/// link cuts, false suspicions (a healthy member reported failed), slow members, joins, and
/// joiners that crash before or after they connect; half of the scenarios with simulated
/// disks. With two shards, a scenario may wipe out the smallest shard entirely (every member
/// of it crashes at once): its state is then nowhere, and the group must not resume the shard
/// empty (it waits; the scenario is not expected to settle). Otherwise at most a minority of
/// the members is lost (a joiner that never connects counts as lost), so the run must end
/// settled. Returns the configuration, whether it must end settled, and a one-line
/// description.
pub fn random_group(seed: u64) -> (GroupConfig, bool, String) {
    let mut rng = SimRng::new(seed ^ 0x6d65_6d62_6572_7321);
    let n = 3 + rng.below(7) as u32;
    let messages = 10 + rng.below(30);
    let mut config = GroupConfig::new(seed, n, messages);
    // A third of the scenarios lay the group out in two shards (ranks alternate), so that
    // removals move members between shards.
    let mut flexible = false;
    if n >= 4 && rng.chance(1, 3) {
        config.shards = 2;
        // Half of those use flexible shards, whose survivors stay where they are.
        if rng.chance(1, 2) {
            flexible = true;
            let spec = SubgroupSpec::new("sim", Policy::Flexible { shards: 2, min: 1, max: n as usize });
            config.layout = Some(std::rc::Rc::new(GroupLayout::new(vec![spec]).expect("a valid layout")));
        }
    }
    // Lose at most a minority of the group and, with two shards, at most one member (unless
    // a shard is wiped out on purpose): losing every holder of a shard's state loses the state.
    let mut budget = if config.shards > 1 { 1 } else { (n as usize - 1) / 2 };
    let mut live = true;
    let mut alive: Vec<NodeId> = (0..n).map(NodeId).collect();
    let mut lost = 0;
    let mut next_id = 100;
    let mut t = 2 * MS + rng.below(8 * MS);
    let mut words = Vec::new();
    if flexible {
        words.push("flexible-shards".to_string());
    }
    let pick = |rng: &mut SimRng, v: &[NodeId]| v[rng.below(v.len() as u64) as usize];
    let mut persistent = false;
    for _ in 0..1 + rng.below(5) {
        t += rng.range(MS..=30 * MS);
        let choice = rng.below(18);
        let can_lose = lost < budget;
        match choice {
            0 | 1 if can_lose => {
                let x = pick(&mut rng, &alive);
                alive.retain(|&m| m != x);
                lost += 1;
                config.plan.push(Plan::Crash { node: x, at: Time(t) });
                words.push(format!("crash n{} at {}ms", x.0, t / MS));
            }
            2 | 3 if can_lose => {
                // A member (the leader half the time) dies on a named step; a join triggers the
                // view change.
                let x = if rng.chance(1, 2) { alive[0] } else { pick(&mut rng, &alive) };
                let step = StepKind::ALL[rng.below(StepKind::ALL.len() as u64) as usize];
                alive.retain(|&m| m != x);
                lost += 1;
                config.plan.push(Plan::CrashOnStep { node: x, step, after: Time(t) });
                let via = pick(&mut rng, &alive);
                config.plan.push(Plan::Join { node: NodeId(next_id), via, at: Time(t) });
                words.push(format!("n{} dies on {step:?} after {}ms; n{next_id} joins", x.0, t / MS));
                next_id += 1;
            }
            4 if can_lose => {
                // Several leave at once, the leader among them half the time: the next leader
                // takes over the view change.
                let k = 1 + rng.below((budget - lost) as u64) as usize;
                let mut leavers = Vec::new();
                if rng.chance(1, 2) {
                    leavers.push(alive[0]);
                }
                while leavers.len() < k {
                    let x = pick(&mut rng, &alive);
                    if !leavers.contains(&x) {
                        leavers.push(x);
                    }
                }
                for &x in &leavers {
                    alive.retain(|&m| m != x);
                    config.plan.push(Plan::Leave { node: x, at: Time(t) });
                }
                lost += leavers.len();
                words.push(format!("{:?} leave at {}ms", leavers.iter().map(|n| n.0).collect::<Vec<_>>(), t / MS));
            }
            5 if can_lose => {
                // A minority of one or more is cut off, then comes back under new ids.
                let k = 1 + rng.below((budget - lost) as u64) as usize;
                let mut side = Vec::new();
                while side.len() < k {
                    let x = pick(&mut rng, &alive);
                    if !side.contains(&x) {
                        side.push(x);
                    }
                }
                alive.retain(|m| !side.contains(m));
                lost += side.len();
                let heal = t + rng.range(15 * MS..=40 * MS);
                config.plan.push(Plan::Partition { side: side.clone(), at: Time(t), heal: Some(Time(heal)) });
                let mut back = Vec::new();
                for _ in &side {
                    let via = pick(&mut rng, &alive);
                    config.plan.push(Plan::Join { node: NodeId(next_id), via, at: Time(heal + 5 * MS) });
                    back.push(next_id);
                    next_id += 1;
                }
                let ids: Vec<u32> = side.iter().map(|n| n.0).collect();
                words.push(format!("{ids:?} cut off {}-{}ms, back as {back:?}", t / MS, heal / MS));
                t = t.max(heal);
            }
            6 if can_lose && alive.len() >= 2 => {
                let a = pick(&mut rng, &alive);
                let b = pick(&mut rng, &alive.iter().copied().filter(|&m| m != a).collect::<Vec<_>>());
                // One of the two is removed; which one depends on timing: budget both.
                if lost + 2 <= budget {
                    lost += 2;
                    alive.retain(|&m| m != a && m != b);
                    let heal = t + 30 * MS;
                    config.plan.push(Plan::OneWay { from: a, to: b, at: Time(t), heal: Some(Time(heal)) });
                    words.push(format!("link n{}>n{} cut {}-{}ms", a.0, b.0, t / MS, heal / MS));
                } else {
                    // A false suspicion: a healthy member reported failed is removed.
                    let x = pick(&mut rng, &alive);
                    let by = pick(&mut rng, &alive.iter().copied().filter(|&m| m != x).collect::<Vec<_>>());
                    alive.retain(|&m| m != x);
                    lost += 1;
                    config.plan.push(Plan::Report { by, node: x, at: Time(t) });
                    words.push(format!("n{} falsely reports n{} at {}ms", by.0, x.0, t / MS));
                }
            }
            7 => {
                // Slow below the suspicion timeout: nobody may be removed for it.
                let x = pick(&mut rng, &alive);
                let tick = rng.range(MS / 2..=4 * MS);
                let until = t + rng.range(10 * MS..=60 * MS);
                config.plan.push(Plan::Slow { node: x, tick_ns: tick, at: Time(t), until: Some(Time(until)) });
                words.push(format!("n{} runs every {}us {}-{}ms", x.0, tick / 1000, t / MS, until / MS));
            }
            8 if can_lose => {
                // A joiner crashes before it connects (perhaps after it was admitted): the view
                // that adds it may hold a member that never takes part.
                let via = pick(&mut rng, &alive);
                let j = NodeId(next_id);
                next_id += 1;
                lost += 1;
                let after = rng.range(10_000..=2 * MS);
                config.plan.push(Plan::Join { node: j, via, at: Time(t) });
                config.plan.push(Plan::Crash { node: j, at: Time(t + after) });
                words.push(format!(
                    "n{} joins via n{} at {}ms and crashes {}us later",
                    j.0,
                    via.0,
                    t / MS,
                    after / 1000
                ));
            }
            9 if can_lose => {
                // A joiner crashes right after it connected and installed its first view.
                let via = pick(&mut rng, &alive);
                let j = NodeId(next_id);
                next_id += 1;
                lost += 1;
                config.plan.push(Plan::Join { node: j, via, at: Time(t) });
                config.plan.push(Plan::CrashOnStep { node: j, step: StepKind::Installed, after: Time(t) });
                words.push(format!("n{} joins via n{} at {}ms and crashes once in", j.0, via.0, t / MS));
            }
            11 if can_lose => {
                // A member crashes and comes back from its disk while the group runs: with no
                // contact (its own command: it looks for the running group among its saved
                // view's members) or with a contact. It rejoins the running group.
                let x = pick(&mut rng, &alive);
                let back = t + rng.range(MS..=40 * MS);
                let leader = if rng.chance(1, 2) {
                    x
                } else {
                    pick(&mut rng, &alive.iter().copied().filter(|&m| m != x).collect::<Vec<_>>())
                };
                lost += 1;
                alive.retain(|&m| m != x);
                config.plan.push(Plan::Crash { node: x, at: Time(t) });
                config.plan.push(Plan::Restart { node: x, leader, at: Time(back) });
                persistent = true;
                let how = if leader == x { "its own command".to_string() } else { format!("contact n{}", leader.0) };
                words.push(format!("n{} crashes at {}ms and comes back at {}ms ({how})", x.0, t / MS, back / MS));
            }
            12 if config.shards > 1 && live && lost == 0 => {
                // Wipe out the smallest shard of the first view, then one of its members comes
                // back from its disk: the shard resumes from its logs.
                let layout = first_layout(&config);
                let ids: Vec<NodeId> = (0..n).map(NodeId).collect();
                let shards = layout.layout(&ids).expect("an adequate first view");
                let smallest = shards.iter().min_by_key(|s| s.members.len()).expect("two shards");
                if smallest.members.len() * 2 >= n as usize {
                    continue;
                }
                for &x in &smallest.members {
                    alive.retain(|&m| m != x);
                    config.plan.push(Plan::Crash { node: x, at: Time(t) });
                }
                let x = smallest.members[rng.below(smallest.members.len() as u64) as usize];
                let back = t + rng.range(5 * MS..=40 * MS);
                config.plan.push(Plan::Restart { node: x, leader: x, at: Time(back) });
                persistent = true;
                budget = 0;
                let ids: Vec<u32> = smallest.members.iter().map(|m| m.0).collect();
                words.push(format!(
                    "{} wiped out ({ids:?} crash) at {}ms, n{} back from its disk at {}ms",
                    smallest.id,
                    t / MS,
                    x.0,
                    back / MS
                ));
            }
            10 if config.shards > 1 && live && lost == 0 => {
                // Wipe out the smallest shard of the first view: its state is nowhere.
                let layout = first_layout(&config);
                let ids: Vec<NodeId> = (0..n).map(NodeId).collect();
                let shards = layout.layout(&ids).expect("an adequate first view");
                let smallest = shards.iter().min_by_key(|s| s.members.len()).expect("two shards");
                for &x in &smallest.members {
                    alive.retain(|&m| m != x);
                    config.plan.push(Plan::Crash { node: x, at: Time(t) });
                }
                live = false;
                budget = 0;
                let ids: Vec<u32> = smallest.members.iter().map(|m| m.0).collect();
                words.push(format!("{} wiped out ({ids:?} crash) at {}ms", smallest.id, t / MS));
            }
            _ => {
                let via = pick(&mut rng, &alive);
                config.plan.push(Plan::Join { node: NodeId(next_id), via, at: Time(t) });
                words.push(format!("n{next_id} joins via n{} at {}ms", via.0, t / MS));
                next_id += 1;
            }
        }
    }
    config.end = Time(t + 250 * MS);
    // Half the scenarios simulate disks (drawn last: the draws above stay as they were), so
    // the durability checker judges the persistence frontiers through every fault above.
    if rng.chance(1, 2) || persistent {
        let slowest = rng.range(100_000..=5 * MS);
        config.sync_ns = Some(20_000..=slowest);
        words.push(format!("disks sync in 20us-{}us", slowest / 1000));
    }
    let shards = config.shards;
    (config, live, format!("{n} members, {shards} shard(s), {messages} messages each: {}", words.join("; ")))
}

/// The layout a scenario's first view has.
fn first_layout(config: &GroupConfig) -> std::rc::Rc<dyn derecho::protocol::LayoutFn> {
    config.layout.clone().unwrap_or_else(|| {
        std::rc::Rc::new(derecho::protocol::RoundRobinShards {
            shards: config.shards,
            mode: config.mode,
            min_per_shard: config.min_members,
        })
    })
}

/// A random total-restart scenario from `seed` (PROTOCOLS §4.1): a group on simulated disks
/// loses every member at once (unsynced writes partly kept, a record perhaps torn), perhaps a
/// bit flips in one member's newest log, and the members come back in a seeded order with a
/// seeded restart leader; some may never come back. Before that, a member may crash early, a
/// sync may fail (its member stops) and a new member may join. Half the time the loss is a
/// power cut: each log's first lost unsynced record stays on disk torn, and recovery calls the
/// log damaged. The flag says whether the group must resume: every member back, no bit flip,
/// and, after a power cut, one shard only (with two shards a member may be alone in its
/// shard, and its torn log cannot stand for it alone).
pub fn random_restart(seed: u64) -> (GroupConfig, bool, String) {
    let mut rng = SimRng::new(seed ^ 0x7265_7374_6172_7421);
    let n = 3 + rng.below(3) as u32;
    let messages = 20 + rng.below(40);
    let mut config = GroupConfig::new(seed, n, messages);
    let mut words = Vec::new();
    if n >= 4 && rng.chance(1, 2) {
        let spec = SubgroupSpec::new("sim", Policy::Flexible { shards: 2, min: 1, max: n as usize });
        config.layout = Some(std::rc::Rc::new(GroupLayout::new(vec![spec]).expect("a valid layout")));
        config.shards = 2;
        words.push("two flexible shards".to_string());
    }
    let slowest = rng.range(100_000..=3 * MS);
    config.sync_ns = Some(20_000..=slowest);
    // Everyone dies together, while messages are still flowing; before that, perhaps one
    // member crashed (and was removed) and a new one joined (receiving a state): views whose
    // members saved different views and hold logs of different lengths.
    let crash_at = rng.range(8 * MS..=30 * MS);
    let mut ids: Vec<u32> = (0..n).collect();
    let mut early = None;
    if rng.chance(1, 2) {
        let who = rng.below(u64::from(n)) as u32;
        let at = rng.range(MS..=crash_at - 2 * MS);
        config.plan.push(Plan::Crash { node: NodeId(who), at: Time(at) });
        early = Some(who);
        words.push(format!("n{who} crashes at {}us", at / 1000));
    }
    // Perhaps a disk fills up (or a sync fails) at another member, which stops.
    if rng.chance(1, 4) {
        let who = (0..n).rev().find(|i| Some(*i) != early).expect("another member");
        let at = rng.range(MS..=crash_at - MS);
        config.plan.push(Plan::SyncFails { node: NodeId(who), at: Time(at) });
        words.push(format!("n{who}'s sync fails from {}us", at / 1000));
    }
    if rng.chance(1, 3) {
        let via = (0..n).find(|i| Some(*i) != early).expect("another member");
        let at = rng.range(MS..=crash_at - MS);
        config.plan.push(Plan::Join { node: NodeId(100), via: NodeId(via), at: Time(at) });
        ids.push(100);
        words.push(format!("n100 joins at {}us", at / 1000));
    }
    for &i in &ids {
        if Some(i) != early {
            config.plan.push(Plan::Crash { node: NodeId(i), at: Time(crash_at) });
        }
    }
    words.push(format!("all crash at {}us", crash_at / 1000));
    if rng.chance(1, 3) {
        let who = NodeId(ids[rng.below(ids.len() as u64) as usize]);
        config.plan.push(Plan::Corrupt { node: who, at: Time(crash_at + MS) });
        words.push(format!("a bit flips in n{}'s log", who.0));
    }
    // Who comes back, in what order; the leader is one of them. With two shards everyone comes
    // back (a shard's only holders may be the ones missing).
    let mut order: Vec<u32> = ids.clone();
    for i in (1..order.len()).rev() {
        order.swap(i, rng.below(i as u64 + 1) as usize);
    }
    // Mostly a minority missing; sometimes too many for a quorum (the group then waits).
    let missing = match (config.shards > 1, rng.chance(1, 5)) {
        (true, _) => 0,
        (false, false) => rng.below(u64::from(n).div_ceil(2)) as usize,
        (false, true) => rng.range(1..=order.len() as u64 - 1) as usize,
    };
    let back = &order[..order.len() - missing];
    // The leader is one of the first members: the joiner may have saved no view yet.
    let first: Vec<u32> = back.iter().copied().filter(|&i| i < n).collect();
    let Some(&leader) = first.get(rng.below(first.len().max(1) as u64) as usize) else {
        // Only the joiner comes back: nothing can restart.
        config.end = Time(crash_at + 100 * MS);
        return (config, false, format!("{n} members: {}; nobody who can lead comes back", words.join("; ")));
    };
    let leader = NodeId(leader);
    let mut t = crash_at + 2 * MS;
    for &i in back {
        t += rng.range(0..=3 * MS);
        config.plan.push(Plan::Restart { node: NodeId(i), leader, at: Time(t) });
    }
    words.push(format!("back in order {back:?}, n{} leads, {missing} never back", leader.0));
    config.end = Time(t + 200 * MS);
    // Drawn last, so that the draws above stay as they were.
    let power_cut = rng.chance(1, 2);
    if power_cut {
        for p in &mut config.plan {
            if let Plan::Crash { node, at } = *p
                && at == Time(crash_at)
            {
                *p = Plan::PowerCut { node, at };
            }
        }
        words.push("the crash is a power cut (torn records look corrupt)".to_string());
    }
    // With every member back and no bit flip a quorum is sure (whatever the last view was).
    let corrupt = config.plan.iter().any(|p| matches!(p, Plan::Corrupt { .. }));
    let live = missing == 0 && !corrupt && (!power_cut || config.shards == 1);
    (config, live, format!("{n} members, {messages} messages each: {}", words.join("; ")))
}

/// Runs random scenarios from fresh seeds (or `SIM_SEED`'s, or `SIM_SEEDS` of them) until
/// `count` ran or `time_box` passed; panics at the first failure with its replay line. Returns
/// the number of seeds run.
///
/// # Panics
///
/// At the first failing seed.
pub fn fresh_group_seeds(test: &str, count: u64, time_box: Duration) -> u64 {
    fresh_seeds(test, count, time_box, random_group)
}

/// As [`fresh_group_seeds`], with total-restart scenarios ([`random_restart`]).
///
/// # Panics
///
/// At the first failing seed.
pub fn fresh_restart_seeds(test: &str, count: u64, time_box: Duration) -> u64 {
    fresh_seeds(test, count, time_box, random_restart)
}

fn fresh_seeds(test: &str, count: u64, time_box: Duration, make: impl Fn(u64) -> (GroupConfig, bool, String)) -> u64 {
    let started = Instant::now();
    let (base, count, bounded) = match (replay_seed(), parse_u64(SEEDS_VAR)) {
        (Some(seed), _) => (seed, 1, false),
        (None, Some(c)) => (clock_seed(), c, false),
        (None, None) => (clock_seed(), count, true),
    };
    let mut seeds = SimRng::new(base);
    let mut ran = 0;
    for _ in 0..count {
        if bounded && started.elapsed() >= time_box {
            break;
        }
        let seed = if replay_seed().is_some() { base } else { seeds.next_u64() };
        let (config, live, about) = make(seed);
        if let Err(report) = run_group(test, config, live) {
            panic!("{report}\nscenario: {about}");
        }
        ran += 1;
    }
    println!("{test}: {ran} fresh seeds from base {base:#x} in {:?}", started.elapsed());
    ran
}
