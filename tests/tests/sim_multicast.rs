//! The static-group multicast (PROTOCOLS §1, §2) under the deterministic simulator (TESTING.md
//! tier T1), judged by every checker of `derecho_tests::checkers` after every step.
//!
//! * Fixed regression seeds, one test per configuration: members, senders, delivery mode, slow
//!   members, tiny windows and rings, overlapping shards.
//! * Fresh seeds drawn from the clock, bounded in count and wall time.
//! * Determinism: a seed's trace is a function of the seed.
//! * Faults: a cut link stalls its shard, and the stall is reported as missing progress, never as
//!   a safety violation.
//! * The checkers themselves: each notices a history forged to break its property.
//!
//! `SIM_SEED=<n>` replays one seed of any test here; every failure prints the command. See
//! `derecho_tests::simulation` for `SIM_SEEDS` and `SIM_TRACE`.

use std::time::Duration;

use derecho::protocol::{DeliveryMode, NodeId, ShardRef, Time, Version};
use derecho::sim::{
    Active, Cut, Fault, FaultKind, History, Members, Senders, ShardSpec, Sim, SimConfig, SlowNode, Workload, shard_id,
};
use derecho_tests::checkers::stability::received_seqs;
use derecho_tests::checkers::{
    AllDelivered, Checker, Checkers, DeliveredWhenStable, FifoPerSender, NoDuplicates, NoFaults, PayloadIntegrity,
    Property, TotalOrder,
};
use derecho_tests::scenarios::random_static_group;
use derecho_tests::simulation::{Report, SimTest, Verdict, replay_seed, run_fresh_seeds};

const TARGET: &str = "sim_multicast";

/// Fails with the replay command of `report` unless `ok`.
fn ensure(test: &SimTest, report: &Report, ok: bool, what: &str) {
    assert!(ok, "{} seed {}: {what}\nreplay: {}", test.name, report.seed, test.replay(report.seed));
}

/// The number of deliveries each member must make: the messages of every active sender of
/// every shard it belongs to.
fn expected_deliveries(sim: &Sim, member: NodeId) -> usize {
    sim.streams()
        .iter()
        .filter(|s| sim.view().shards.iter().any(|l| l.id == s.shard() && l.members.contains(&member)))
        .map(|s| s.total() as usize)
        .sum()
}

/// Every member delivered every message (the checkers say so too; this is the direct count).
fn ensure_everything_delivered(test: &SimTest, report: &Report) {
    let sim = report.sim();
    for &m in sim.node_ids() {
        let (got, want) = (sim.deliveries(m).len(), expected_deliveries(sim, m));
        ensure(test, report, got == want, &format!("{m} delivered {got} messages, expected {want}"));
    }
}

fn one_shard(seed: u64, members: u32, spec: ShardSpec, messages: u64) -> SimConfig {
    SimConfig { shards: vec![spec], ..SimConfig::new(seed, members, DeliveryMode::Ordered, messages) }
}

// ---- fixed regression seeds ---------------------------------------------------------------------

#[test]
fn three_members_all_senders_ordered() {
    let t = SimTest::new(TARGET, "three_members_all_senders_ordered");
    for report in t.run_seeds(&[1, 2, 3, 0xdeca_fbad], |seed| SimConfig::new(seed, 3, DeliveryMode::Ordered, 40)) {
        ensure_everything_delivered(&t, &report);
        let sim = report.sim();
        ensure(&t, &report, sim.deliveries(sim.node_ids()[0]).len() == 120, "3 senders x 40 messages");
        ensure(&t, &report, sim.stats().window_full > 0, "a window of 4 never filled");
    }
}

#[test]
fn five_members_half_senders_ordered() {
    let t = SimTest::new(TARGET, "five_members_half_senders_ordered");
    let spec = ShardSpec { senders: Senders::Half, ..ShardSpec::all(DeliveryMode::Ordered) };
    for report in t.run_seeds(&[4, 5, 6, 77], |seed| one_shard(seed, 5, spec.clone(), 30)) {
        ensure_everything_delivered(&t, &report);
        let sim = report.sim();
        ensure(&t, &report, sim.view().shards[0].senders.len() == 3, "half of 5 members, rounded up, send");
        ensure(&t, &report, sim.deliveries(sim.node_ids()[4]).len() == 90, "3 senders x 30 messages");
    }
}

#[test]
fn one_sender_in_the_layout_ordered() {
    let t = SimTest::new(TARGET, "one_sender_in_the_layout_ordered");
    let spec = ShardSpec { senders: Senders::One, ..ShardSpec::all(DeliveryMode::Ordered) };
    for report in t.run_seeds(&[8, 9, 10], |seed| one_shard(seed, 4, spec.clone(), 60)) {
        ensure_everything_delivered(&t, &report);
        let sim = report.sim();
        ensure(&t, &report, sim.view().shards[0].senders.len() == 1, "one sender");
        ensure(&t, &report, sim.stats().window_full > 0, "60 messages through a window of 4 never waited");
    }
}

#[test]
fn idle_senders_send_nulls_for_one_active_sender() {
    let t = SimTest::new(TARGET, "idle_senders_send_nulls_for_one_active_sender");
    let spec = ShardSpec { active: Active::One, ..ShardSpec::all(DeliveryMode::Ordered) };
    for report in t.run_seeds(&[11, 12, 13], |seed| one_shard(seed, 4, spec.clone(), 40)) {
        ensure_everything_delivered(&t, &report);
        let sim = report.sim();
        let active = sim.streams()[0].node();
        let shard = shard_id(0);
        for &m in sim.node_ids().iter().filter(|&&m| m != active) {
            let published = sim.node(m).sent_count(shard).unwrap();
            // PROTOCOLS §2.3: an idle sender publishes nulls up to the active sender's index.
            ensure(&t, &report, published >= 39, &format!("idle {m} published only {published} null indices"));
        }
    }
}

#[test]
fn unordered_all_senders() {
    let t = SimTest::new(TARGET, "unordered_all_senders");
    for report in t.run_seeds(&[14, 15, 16], |seed| SimConfig::new(seed, 4, DeliveryMode::Unordered, 40)) {
        ensure_everything_delivered(&t, &report);
        let sim = report.sim();
        for &m in sim.node_ids() {
            ensure(
                &t,
                &report,
                sim.deliveries(m).iter().all(|d| d.version.is_none()),
                "unordered deliveries have no version",
            );
            // Unordered senders never publish nulls.
            ensure(&t, &report, sim.node(m).sent_count(shard_id(0)) == Some(40), "40 indices, no nulls");
        }
    }
}

#[test]
fn unordered_half_senders() {
    let t = SimTest::new(TARGET, "unordered_half_senders");
    let spec = ShardSpec { senders: Senders::Half, ..ShardSpec::all(DeliveryMode::Unordered) };
    for report in t.run_seeds(&[17, 18, 19], |seed| one_shard(seed, 5, spec.clone(), 40)) {
        ensure_everything_delivered(&t, &report);
    }
}

#[test]
fn slow_member_runs_only_at_its_ticks() {
    let t = SimTest::new(TARGET, "slow_member_runs_only_at_its_ticks");
    const TICK: u64 = 30_000;
    let config = |seed| SimConfig {
        slow_nodes: vec![SlowNode { rank: 1, tick_ns: Some(TICK), extra_latency_ns: 0 }],
        ..SimConfig::new(seed, 4, DeliveryMode::Ordered, 30)
    };
    for report in t.run_seeds(&[20, 21, 22], config) {
        ensure_everything_delivered(&t, &report);
        let sim = report.sim();
        let slow = sim.node_ids()[1];
        ensure(&t, &report, sim.stats().wakes > 0, "the slow member never woke");
        let off_tick = sim.deliveries(slow).iter().find(|d| d.at.0 % TICK != 0);
        ensure(&t, &report, off_tick.is_none(), &format!("the slow member delivered between ticks: {off_tick:?}"));
    }
}

#[test]
fn slow_member_links_delay_its_deliveries() {
    let t = SimTest::new(TARGET, "slow_member_links_delay_its_deliveries");
    const EXTRA: u64 = 200_000;
    let config = |seed| SimConfig {
        slow_nodes: vec![SlowNode { rank: 2, tick_ns: None, extra_latency_ns: EXTRA }],
        ..SimConfig::new(seed, 3, DeliveryMode::Ordered, 30)
    };
    for report in t.run_seeds(&[23, 24, 25], config) {
        ensure_everything_delivered(&t, &report);
        let sim = report.sim();
        let slow = sim.node_ids()[2];
        // A message from another sender reaches the slow member over one of its links at least.
        for d in sim.deliveries(slow).iter().filter(|d| d.sender != slow) {
            let sent = sim.stream(d.sender, d.shard).unwrap().sent().iter().find(|s| s.index == d.index);
            let sent_at = sent.map_or(Time(0), |s| s.at);
            ensure(&t, &report, d.at.0 >= sent_at.0 + EXTRA, &format!("delivered before its push could arrive: {d:?}"));
        }
    }
}

/// The smallest ring the limits allow for `payload_len_max`.
fn smallest_ring(payload_len_max: u32) -> u32 {
    (2 * (32 + payload_len_max.next_multiple_of(16))).next_multiple_of(64)
}

/// Bytes of ring one message occupies.
fn record_len(payload_len: usize) -> u64 {
    32 + payload_len.next_multiple_of(16) as u64
}

#[test]
fn tiny_window_and_ring() {
    let t = SimTest::new(TARGET, "tiny_window_and_ring");
    let config = |seed| {
        let mut c = SimConfig::new(seed, 3, DeliveryMode::Ordered, 60);
        c.limits.window_len = 2;
        c.limits.payload_len_max = 64;
        c.limits.ring_len = smallest_ring(64);
        c.workload.payload_len = 24..=64;
        c
    };
    for report in t.run_seeds(&[26, 27, 28, 29], config) {
        ensure_everything_delivered(&t, &report);
        let sim = report.sim();
        ensure(&t, &report, sim.stats().window_full > 10, "a window of 2 rarely filled");
        let ring = u64::from(sim.config().limits.ring_len);
        for s in sim.streams() {
            let bytes: u64 = s.sent().iter().map(|m| record_len(m.len)).sum();
            ensure(&t, &report, bytes >= 10 * ring, &format!("{} wrapped its ring fewer than 10 times", s.node()));
        }
    }
}

#[test]
fn tiny_ring_fills_before_the_window() {
    let t = SimTest::new(TARGET, "tiny_ring_fills_before_the_window");
    // One sender, so no nulls: every outstanding index is a record of at least 64 bytes.
    let config = |seed| {
        let spec = ShardSpec { senders: Senders::One, ..ShardSpec::all(DeliveryMode::Ordered) };
        let mut c = one_shard(seed, 3, spec, 60);
        c.limits.window_len = 32;
        c.limits.payload_len_max = 96;
        c.limits.ring_len = smallest_ring(96);
        c.workload.payload_len = 24..=96;
        c.workload.interval_ns = 0..=500;
        c
    };
    for report in t.run_seeds(&[30, 31, 32], config) {
        ensure_everything_delivered(&t, &report);
        let sim = report.sim();
        // The 256-byte ring holds at most 4 records of 64 bytes or more: a full ring, not the
        // window of 32, made the sender wait.
        ensure(&t, &report, sim.config().limits.ring_len == 256, "the smallest ring for 96-byte payloads");
        ensure(&t, &report, sim.stats().window_full > 0, "the ring never filled");
        let sender = sim.streams()[0].node();
        let most = sim.node(sender).outstanding_max(shard_id(0)).unwrap();
        ensure(&t, &report, most <= 4, &format!("{sender} had {most} messages outstanding in a 256-byte ring"));
    }
}

/// PROTOCOLS §1 (a member writes only its own row) at the ring's end: 40-byte payloads make
/// 80-byte records, so in a 256-byte ring the fourth record starts at 240 and a pad must fill
/// the last 16 bytes, less than a record header. The pad must stay inside the ring: at rank 0 a
/// header written past it lands in the next member's row, at the last rank past the table.
#[test]
fn a_pad_shorter_than_a_header_stays_in_the_ring() {
    let t = SimTest::new(TARGET, "a_pad_shorter_than_a_header_stays_in_the_ring");
    for sender in [0, 1] {
        let config = |seed| {
            let spec = ShardSpec { senders: Senders::Positions(vec![sender]), ..ShardSpec::all(DeliveryMode::Ordered) };
            let mut c = one_shard(seed, 2, spec, 12);
            c.limits.payload_len_max = 64;
            c.limits.ring_len = 256;
            c.workload.payload_len = 40..=40;
            c
        };
        for report in t.run_seeds(&[60], config) {
            ensure_everything_delivered(&t, &report);
        }
    }
}

#[test]
fn window_of_one() {
    let t = SimTest::new(TARGET, "window_of_one");
    let config = |seed| {
        let mut c = SimConfig::new(seed, 3, DeliveryMode::Ordered, 20);
        c.limits.window_len = 1;
        c
    };
    for report in t.run_seeds(&[33, 34], config) {
        ensure_everything_delivered(&t, &report);
    }
}

#[test]
fn two_overlapping_shards() {
    let t = SimTest::new(TARGET, "two_overlapping_shards");
    let config = |seed| SimConfig {
        shards: vec![
            ShardSpec { members: Members::Ranks(vec![0, 1, 2]), ..ShardSpec::all(DeliveryMode::Ordered) },
            ShardSpec {
                members: Members::Ranks(vec![1, 2, 3]),
                senders: Senders::Half,
                ..ShardSpec::all(DeliveryMode::Unordered)
            },
        ],
        ..SimConfig::new(seed, 4, DeliveryMode::Ordered, 25)
    };
    for report in t.run_seeds(&[35, 36, 37], config) {
        ensure_everything_delivered(&t, &report);
        let sim = report.sim();
        ensure(&t, &report, expected_deliveries(sim, sim.node_ids()[1]) == 75 + 50, "member 1 is in both shards");
        ensure(
            &t,
            &report,
            sim.deliveries(sim.node_ids()[0]).iter().all(|d| d.shard == shard_id(0)),
            "member 0 is in shard 0 only",
        );
    }
}

#[test]
fn single_member_group() {
    let t = SimTest::new(TARGET, "single_member_group");
    for report in t.run_seeds(&[38], |seed| SimConfig::new(seed, 1, DeliveryMode::Ordered, 30)) {
        ensure_everything_delivered(&t, &report);
        ensure(&t, &report, report.sim().stats().arrivals == 0, "a lone member has no peer to push to");
    }
}

// ---- fresh seeds --------------------------------------------------------------------------------

#[test]
fn fresh_seeds() {
    let t = SimTest::new(TARGET, "fresh_seeds");
    let summary = run_fresh_seeds(&t, 500, Duration::from_secs(20), random_static_group);
    assert!(summary.seeds > 0, "no seed ran");
}

// ---- determinism --------------------------------------------------------------------------------

fn traced(t: &SimTest, seed: u64) -> Report {
    let mut config = random_static_group(seed);
    config.record_trace = true;
    t.run_clean(config)
}

#[test]
fn same_seed_same_trace() {
    let t = SimTest::new(TARGET, "same_seed_same_trace");
    for seed in t.seeds(&[0x5a5a, 9]) {
        let (a, b) = (traced(&t, seed), traced(&t, seed));
        let (ta, tb) = (a.sim().trace(), b.sim().trace());
        ensure(&t, &a, ta.len() > 50, &format!("a trace of {} lines says little", ta.len()));
        ensure(&t, &a, ta.lines().unwrap() == tb.lines().unwrap(), "the seed ran two different ways");
        ensure(&t, &a, ta.hash() == tb.hash(), "equal traces hashed differently");
    }
}

#[test]
fn different_seeds_different_traces() {
    let t = SimTest::new(TARGET, "different_seeds_different_traces");
    let seeds: Vec<u64> = (100..120).collect();
    let hashes: Vec<u64> = seeds.iter().map(|&seed| traced(&t, seed).sim().trace().hash()).collect();
    for i in 0..seeds.len() {
        for j in i + 1..seeds.len() {
            assert_ne!(
                hashes[i],
                hashes[j],
                "seeds {} and {} gave the same trace; compare them with\n{}\n{}",
                seeds[i],
                seeds[j],
                t.replay(seeds[i]),
                t.replay(seeds[j])
            );
        }
    }
    // The same configuration with another seed also runs differently (latencies, sizes).
    let run = |seed| {
        let mut c = SimConfig::new(seed, 3, DeliveryMode::Ordered, 10);
        c.record_trace = true;
        t.run_clean(c).sim().trace().hash()
    };
    assert_ne!(run(1), run(2), "seeds 1 and 2 of one configuration ran alike:\n{}\n{}", t.replay(1), t.replay(2));
}

// ---- faults -------------------------------------------------------------------------------------

#[test]
fn a_cut_link_stalls_progress_without_a_safety_violation() {
    let t = SimTest::new(TARGET, "a_cut_link_stalls_progress_without_a_safety_violation");
    for seed in t.seeds(&[40, 41, 42]) {
        for mode in [DeliveryMode::Ordered, DeliveryMode::Unordered] {
            let mut config = SimConfig::new(seed, 3, mode, 40);
            config.cuts = vec![Cut { from: 0, to: 2, at: Time(30_000) }];
            let report = t.run(config);
            let what = format!("{mode:?}: the cut must be reported as no progress, and only that");
            ensure(&t, &report, report.verdict.is_liveness_only(), &format!("{what}; got {}", report.verdict));
            let Verdict::Failed(failures) = &report.verdict else { unreachable!("checked above") };
            ensure(&t, &report, failures.len() == 1 && failures[0].checker == "all-delivered", &what);
            ensure(&t, &report, failures[0].message.contains("no progress"), &failures[0].message);
            let sim = report.sim();
            ensure(&t, &report, sim.stats().dropped > 0, "the cut dropped nothing");
            ensure(&t, &report, sim.is_quiet(), "a stalled static group must go quiet, not spin");
            // Node 0's messages cannot reach node 2, so its window fills and it stops sending.
            let blocked = sim.stream(sim.node_ids()[0], shard_id(0)).unwrap();
            ensure(&t, &report, blocked.blocked() && blocked.unsent() > 0, "node 0 kept sending through a cut");
        }
    }
}

#[test]
fn a_cut_after_the_last_message_changes_nothing() {
    let t = SimTest::new(TARGET, "a_cut_after_the_last_message_changes_nothing");
    let config = |seed| SimConfig {
        cuts: vec![Cut { from: 1, to: 0, at: Time(u64::MAX / 2) }],
        ..SimConfig::new(seed, 3, DeliveryMode::Ordered, 20)
    };
    for report in t.run_seeds(&[43], config) {
        ensure_everything_delivered(&t, &report);
        ensure(&t, &report, report.sim().stats().dropped == 0, "a cut in the far future dropped pushes");
    }
}

// ---- the checkers notice what they are for ------------------------------------------------------

const FORGED: SimTest = SimTest::new(TARGET, "checkers_notice_forged_histories");

/// A clean run of `config` (with the seed `SIM_SEED` names, if set), to be forged.
fn clean(mut config: SimConfig) -> Sim {
    config.seed = replay_seed().unwrap_or(config.seed);
    let seed = config.seed;
    let report = FORGED.run_clean(config);
    report.sim.unwrap_or_else(|| panic!("seed {seed} has no simulation"))
}

/// Runs `checker` over `sim` as it is, then over the history forged by `forge`: clean, then
/// failing with a message containing `expect`.
fn notices(make: fn() -> Box<dyn Checker>, sim: &mut Sim, forge: impl FnOnce(&mut History), expect: &str) {
    let replay = FORGED.replay(sim.config().seed);
    let mut before = make();
    let name = before.name();
    assert_eq!(before.after_step(sim), Ok(()), "{name} fails on a clean history\nreplay: {replay}");
    forge(sim.history_mut());
    let mut after = make();
    let outcome = sim.outcome();
    let e = after
        .after_step(sim)
        .and_then(|()| after.at_end(sim, &outcome))
        .expect_err(&format!("{name} did not notice the forgery expecting {expect:?}\nreplay: {replay}"));
    assert!(e.contains(expect), "{name} noticed, but said: {e}\nreplay: {replay}");
}

fn ordered_run() -> Sim {
    clean(SimConfig::new(50, 3, DeliveryMode::Ordered, 10))
}

#[test]
fn checkers_notice_forged_histories() {
    // Two messages of different senders swapped at member 1: another order than the others'.
    notices(
        || Box::new(TotalOrder::default()),
        &mut ordered_run(),
        |h| {
            let d = &mut h.deliveries[1];
            let j = (1..d.len()).find(|&j| d[j].sender != d[0].sender).unwrap();
            d.swap(0, j);
        },
        "but",
    );
    // A version that is not k * S + r.
    notices(
        || Box::new(TotalOrder::default()),
        &mut ordered_run(),
        |h| {
            let v = h.deliveries[2][3].version.unwrap();
            h.deliveries[2][3].version = Some(Version::new(v.view(), v.seq() + 3));
        },
        "must be",
    );
    // A version in an unordered shard.
    notices(
        || Box::new(TotalOrder::default()),
        &mut clean(SimConfig::new(51, 3, DeliveryMode::Unordered, 5)),
        |h| h.deliveries[0][0].version = Some(Version::new(derecho::protocol::ViewId(1), 0)),
        "unordered",
    );
    // A message delivered twice.
    notices(
        || Box::new(NoDuplicates::default()),
        &mut ordered_run(),
        |h| {
            let again = h.deliveries[0][4].clone();
            h.deliveries[0].push(again);
        },
        "second time",
    );
    // The same payload under another index.
    notices(
        || Box::new(NoDuplicates::default()),
        &mut ordered_run(),
        |h| {
            let mut again = h.deliveries[0][4].clone();
            again.index += 1000;
            h.deliveries[0].push(again);
        },
        "workload message",
    );
    // A message lost in the middle: the next one from that sender leaves a gap.
    notices(
        || Box::new(FifoPerSender::default()),
        &mut ordered_run(),
        |h| {
            h.deliveries[2].remove(0);
        },
        "when message 0 of that sender comes next",
    );
    // Two messages of one sender in the wrong order: the first one seen is message 1.
    notices(
        || Box::new(FifoPerSender::default()),
        &mut clean(SimConfig::new(52, 2, DeliveryMode::Unordered, 6)),
        |h| {
            let d = &mut h.deliveries[1];
            let j = (1..d.len()).find(|&j| d[j].sender == d[0].sender).unwrap();
            d.swap(0, j);
        },
        "when message 0 of that sender comes next",
    );
    // Protocol indices that do not increase, payloads in order.
    notices(
        || Box::new(FifoPerSender::default()),
        &mut clean(SimConfig::new(52, 2, DeliveryMode::Unordered, 6)),
        |h| {
            let d = &mut h.deliveries[1];
            let j = (1..d.len()).find(|&j| d[j].sender == d[0].sender).unwrap();
            d[j].index = d[0].index;
        },
        "after index",
    );
    // One flipped payload bit.
    notices(
        || Box::new(PayloadIntegrity::default()),
        &mut ordered_run(),
        |h| h.deliveries[1][5].payload[30] ^= 0x10,
        "corrupt payload",
    );
    // A valid payload delivered under the wrong index.
    notices(
        || Box::new(PayloadIntegrity::default()),
        &mut ordered_run(),
        |h| {
            let other =
                h.deliveries[1].iter().position(|d| d.sender == h.deliveries[1][0].sender && d.index > 0).unwrap();
            h.deliveries[1][0].payload = h.deliveries[1][other].payload.clone();
        },
        "was sent as",
    );
    // A member accusing an honest peer.
    notices(
        || Box::new(NoFaults::default()),
        &mut ordered_run(),
        |h| {
            h.faults.push(Fault {
                at: Time(1),
                step: 1,
                node: NodeId(11),
                kind: FaultKind::PushToNonPeer { from: NodeId(11), to: NodeId(99) },
            })
        },
        "not a peer",
    );
    // A member that delivered only part of the messages (liveness, judged at the end).
    notices(
        || Box::new(AllDelivered),
        &mut ordered_run(),
        |h| {
            h.deliveries[1].truncate(7);
        },
        "no progress",
    );
}

#[test]
fn a_truncated_history_is_a_stall_not_a_safety_violation() {
    let mut sim = ordered_run();
    let replay = FORGED.replay(sim.config().seed);
    sim.history_mut().deliveries[2].truncate(4);
    let outcome = sim.outcome();
    let failures = Checkers::all().finish(&sim, &outcome);
    assert_eq!(failures.len(), 1, "{failures:?}\nreplay: {replay}");
    assert_eq!((failures[0].checker, failures[0].property), ("all-delivered", Property::Liveness), "replay: {replay}");
}

#[test]
fn the_stability_checker_notices_a_delivery_before_every_member_received() {
    // Step until some member lags behind: its published received count is below what will be
    // sent. A delivery forged elsewhere at exactly that seq was not stable.
    let t = SimTest::new(TARGET, "the_stability_checker_notices_a_delivery_before_every_member_received");
    let seed = replay_seed().unwrap_or(53);
    let replay = t.replay(seed);
    let mut sim = Sim::new(SimConfig::new(seed, 3, DeliveryMode::Ordered, 10)).unwrap();
    let shard: ShardRef = shard_id(0);
    let lagging = |sim: &Sim| sim.node_ids().iter().map(|&m| received_seqs(sim, m, shard)).min().unwrap();
    let mut checker = DeliveredWhenStable::default();
    loop {
        assert!(sim.step(), "the run ended before a member delivered while another lagged\nreplay: {replay}");
        assert_eq!(checker.after_step(&sim), Ok(()), "replay: {replay}");
        if !sim.deliveries(sim.node_ids()[0]).is_empty() && lagging(&sim) < 30 {
            break;
        }
    }
    let mut early = sim.deliveries(sim.node_ids()[0])[0].clone();
    early.version = Some(Version::new(sim.view().id, lagging(&sim)));
    sim.history_mut().deliveries[0].push(early);
    let e = checker.after_step(&sim).expect_err(&format!("an unstable delivery passed\nreplay: {replay}"));
    assert!(e.contains("has received only"), "{e}\nreplay: {replay}");
}

#[test]
fn the_replay_command_names_the_seed_and_the_test() {
    let t = SimTest::new(TARGET, "three_members_all_senders_ordered");
    assert_eq!(
        t.replay(42),
        "SIM_SEED=42 cargo test -p derecho-tests --test sim_multicast three_members_all_senders_ordered"
    );
    // And a failing run's message carries it.
    let mut config = SimConfig::new(44, 3, DeliveryMode::Ordered, 20);
    config.cuts = vec![Cut { from: 2, to: 1, at: Time(0) }];
    let report = t.run(config);
    let message = t.failure(&report, "must be clean");
    assert!(message.contains("replay: SIM_SEED=44 cargo test -p derecho-tests --test sim_multicast"), "{message}");
    assert!(!report.verdict.is_clean());
    // Invalid configurations are reported, not run.
    let bad = SimConfig {
        workload: Workload { payload_len: 1..=2, ..SimConfig::new(1, 1, DeliveryMode::Ordered, 1).workload },
        ..SimConfig::new(45, 1, DeliveryMode::Ordered, 1)
    };
    assert!(matches!(t.run(bad).verdict, Verdict::Invalid(_)));
}
