use std::{
    collections::HashSet,
    time::{Duration, Instant},
};

use common::queue::Category;
use proptest::prelude::*;

use super::*;

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// A base instant with room before it: tests look back from `now`.
fn start() -> Instant {
    Instant::now() + secs(86_400)
}

fn config() -> ScalingConfig {
    ScalingConfig {
        min_replicas: 1,
        max_replicas: 10,
        step: 1,
        high: 75.0,
        low: 30.0,
        critical: 90.0,
        prespawn_cpu: 70.0,
        target_concurrency: 0.0,
        target_work_seconds: 2.0,
        worker_cpus: 1.0,
        cooldown_up: secs(30),
        cooldown_down: secs(30),
        stabilization: secs(60),
        drain_timeout: secs(30),
    }
}

fn container(id: &str, category: Category, utilization: f64, in_flight: u64) -> ContainerView {
    ContainerView {
        id: id.into(),
        category,
        utilization,
        cpu_util: 0.0,
        critical: utilization >= 90.0,
        in_flight,
        work_seconds: 0.0,
        sundown_since: None,
        // A ready container in these tests has served unless a test says otherwise.
        served: category != Category::Init,
        unhealthy: false,
    }
}

/// A ready container that never served a request.
fn fresh(id: &str, utilization: f64) -> ContainerView {
    ContainerView {
        served: false,
        ..ready(id, utilization)
    }
}

/// A container that was ready and now fails its probes (published INIT).
fn unhealthy(id: &str, in_flight: u64) -> ContainerView {
    ContainerView {
        unhealthy: true,
        served: true,
        ..container(id, Category::Init, 0.0, in_flight)
    }
}

/// A ready (MU) container at `utilization` % with nothing in flight and an idle CPU.
fn ready(id: &str, utilization: f64) -> ContainerView {
    container(id, Category::Medium, utilization, 0)
}

fn busy(id: &str, utilization: f64, in_flight: u64) -> ContainerView {
    container(id, Category::Medium, utilization, in_flight)
}

fn with_cpu(view: ContainerView, cpu_util: f64) -> ContainerView {
    ContainerView { cpu_util, ..view }
}

fn init(id: &str) -> ContainerView {
    container(id, Category::Init, 0.0, 0)
}

fn sundown(id: &str, in_flight: u64, since: Instant) -> ContainerView {
    ContainerView {
        sundown_since: Some(since),
        ..container(id, Category::Sundown, 0.0, in_flight)
    }
}

fn observe(now: Instant, containers: &[ContainerView]) -> Observation<'_> {
    Observation {
        now,
        containers,
        queued_demand: 0,
        queued_work_seconds: 0.0,
        requested_replicas: None,
    }
}

/// State with the mean utilisation low for longer than the stabilisation window and no recent
/// scaling: a scale-down may happen now.
fn low_for_long(now: Instant) -> ScalerState {
    ScalerState {
        low_since: Some(now - secs(600)),
        ..ScalerState::default()
    }
}

fn ids(list: &[String]) -> Vec<&str> {
    list.iter().map(String::as_str).collect()
}

/// A ready container with `work_seconds` of expected work in flight.
fn working(id: &str, utilization: f64, in_flight: u64, work_seconds: f64) -> ContainerView {
    ContainerView {
        work_seconds,
        ..busy(id, utilization, in_flight)
    }
}

#[test]
fn work_above_target_scales_up_to_the_right_count_within_max() {
    let now = start();
    // 3 + 4 s in flight and 2 s queued for a slot: 9 s at 2 s per container wants 5.
    let pool = [working("a", 40.0, 2, 3.0), working("b", 40.0, 2, 4.0)];
    let obs = Observation {
        queued_work_seconds: 2.0,
        ..observe(now, &pool)
    };
    let decision = decide(&obs, &config(), &ScalerState::default());
    assert_eq!((decision.create, decision.desired), (3, 5));
    assert_eq!(
        decision.reason,
        Reason::Work {
            in_flight_seconds: 7.0,
            queued_seconds: 2.0,
            per_container: 2.0,
            wanted: 5
        }
    );
    assert_eq!(decision.reason.kind(), "work");
    assert_eq!(decision.state.last_scale_up, Some(now));
    // Two CPUs per worker carry 4 s each: 3 containers.
    let two_cpus = ScalingConfig {
        worker_cpus: 2.0,
        ..config()
    };
    assert_eq!(decide(&obs, &two_cpus, &ScalerState::default()).desired, 3);
    // A larger target needs fewer.
    let target5 = ScalingConfig {
        target_work_seconds: 5.0,
        ..config()
    };
    assert_eq!(decide(&obs, &target5, &ScalerState::default()).desired, 2);
    // Clamped to the maximum.
    let max4 = ScalingConfig {
        max_replicas: 4,
        ..config()
    };
    let decision = decide(&obs, &max4, &ScalerState::default());
    assert_eq!((decision.create, decision.desired), (2, 4));
    // Held by the scale-up cooldown like the other load signals.
    let in_cooldown = ScalerState {
        last_scale_up: Some(now - secs(10)),
        ..ScalerState::default()
    };
    let decision = decide(&obs, &config(), &in_cooldown);
    assert_eq!(decision.create, 0);
    assert_eq!(
        decision.reason,
        Reason::UpCooldown {
            wanted: 5,
            remaining: secs(20)
        }
    );
    // A starting container does not hold it (it counts toward the wanted count).
    let with_init = [
        working("a", 40.0, 2, 3.0),
        working("b", 40.0, 2, 4.0),
        init("c"),
    ];
    let obs = Observation {
        queued_work_seconds: 2.0,
        ..observe(now, &with_init)
    };
    assert_eq!(decide(&obs, &config(), &ScalerState::default()).create, 2);
}

#[test]
fn zero_work_changes_nothing() {
    let now = start();
    let pool = [busy("a", 40.0, 2), busy("b", 40.0, 2)];
    let decision = decide(&observe(now, &pool), &config(), &ScalerState::default());
    assert_eq!((decision.create, decision.desired), (0, 2));
    assert_eq!(decision.reason.kind(), "steady");
    // Low load scales down as before: no work is no objection.
    let idle = [ready("a", 10.0), ready("b", 10.0)];
    let decision = decide(&observe(now, &idle), &config(), &low_for_long(now));
    assert_eq!(ids(&decision.sundown), ["a"]);
    assert!(!decide_now(&idle, 0, 0.0, &config()));
}

#[test]
fn work_holds_a_scale_down_that_would_overload_the_rest() {
    let now = start();
    // 3 s on two containers is 1.5 each; on one it would be 3, past 2.
    let pool = [working("a", 10.0, 1, 1.5), working("b", 10.0, 1, 1.5)];
    let decision = decide(&observe(now, &pool), &config(), &low_for_long(now));
    assert!(decision.sundown.is_empty());
    assert_eq!(
        decision.reason,
        Reason::WouldOverload {
            removed: 1,
            signal: Signal::Work,
            projected: 3.0,
            limit: 2.0
        }
    );
    // 2 s fits on one.
    let light = [working("a", 10.0, 1, 1.0), working("b", 10.0, 1, 1.0)];
    let decision = decide(&observe(now, &light), &config(), &low_for_long(now));
    assert_eq!(decision.sundown.len(), 1);
    // Work waiting for a slot holds any scale-down.
    let obs = Observation {
        queued_work_seconds: 0.1,
        ..observe(now, &light)
    };
    let decision = decide(&obs, &config(), &low_for_long(now));
    assert!(decision.sundown.is_empty());
    assert_eq!(decision.reason.kind(), "would_overload");
}

#[test]
fn queued_work_wakes_the_scaler_at_once() {
    let pool = [working("a", 10.0, 1, 0.5), working("b", 10.0, 1, 0.5)];
    assert!(
        !decide_now(&pool, 0, 0.0, &config()),
        "1 s on two: within target"
    );
    assert!(
        decide_now(&pool, 0, 0.2, &config()),
        "work queued for a slot"
    );
    assert!(
        decide_now(&pool, 1, 0.0, &config()),
        "requests with no backend"
    );
    let heavy = [working("a", 10.0, 1, 3.0), working("b", 10.0, 1, 2.0)];
    assert!(decide_now(&heavy, 0, 0.0, &config()), "5 s on two: past 4");
    let target4 = ScalingConfig {
        target_concurrency: 4.0,
        ..config()
    };
    let crowded = [busy("a", 10.0, 5), busy("b", 10.0, 4)];
    assert!(
        decide_now(&crowded, 0, 0.0, &target4),
        "9 in flight on two: past 8"
    );
    assert!(
        !decide_now(&crowded, 0, 0.0, &config()),
        "no concurrency target"
    );
}

#[test]
fn below_minimum_creates_at_once_even_in_cooldown() {
    let now = start();
    let config = ScalingConfig {
        min_replicas: 3,
        ..config()
    };
    let state = ScalerState {
        last_scale_up: Some(now),
        last_scale_down: Some(now),
        low_since: None,
    };
    let pool = [ready("a", 10.0)];
    let decision = decide(&observe(now, &pool), &config, &state);
    assert_eq!(decision.create, 2);
    assert_eq!(decision.desired, 3);
    assert_eq!(decision.reason, Reason::BelowMinimum { active: 1, min: 3 });
    // Creating for the minimum is not a load-based scale-up: the cooldown is not restarted.
    assert_eq!(decision.state.last_scale_up, state.last_scale_up);

    // INIT containers count toward the minimum; SUNDOWN ones do not.
    let pool = [ready("a", 10.0), init("b"), sundown("c", 3, now)];
    let decision = decide(&observe(now, &pool), &config, &state);
    assert_eq!(decision.create, 1);
    assert_eq!(decision.reason, Reason::BelowMinimum { active: 2, min: 3 });
}

#[test]
fn above_maximum_sundowns_the_least_busy_excess() {
    let now = start();
    let config = ScalingConfig {
        max_replicas: 2,
        ..config()
    };
    let pool = [
        busy("a", 50.0, 4),
        busy("b", 50.0, 1),
        busy("c", 50.0, 2),
        init("d"),
    ];
    let decision = decide(&observe(now, &pool), &config, &ScalerState::default());
    assert_eq!(decision.reason, Reason::AboveMaximum { active: 4, max: 2 });
    // The removal order: the INIT container first, then the least busy ready one.
    assert_eq!(ids(&decision.sundown), ["d", "b"]);
    assert_eq!(decision.desired, 2);
}

#[test]
fn demand_scales_from_zero_at_once() {
    let now = start();
    let in_cooldown = ScalerState {
        last_scale_up: Some(now),
        ..ScalerState::default()
    };
    let base = ScalingConfig {
        min_replicas: 0,
        step: 2,
        ..config()
    };
    // (target concurrency, queued, expected creations)
    let cases = [
        (0.0, 5, 2),   // no target: one step (2)
        (2.0, 5, 3),   // ⌈5 / 2⌉
        (10.0, 5, 1),  // max(1, ⌈5 / 10⌉)
        (1.0, 50, 10), // clamped to MAX_CONTAINERS
    ];
    for (target, queued, expected) in cases {
        let config = ScalingConfig {
            target_concurrency: target,
            ..base.clone()
        };
        let obs = Observation {
            queued_demand: queued,
            ..observe(now, &[])
        };
        let decision = decide(&obs, &config, &in_cooldown);
        assert_eq!(
            decision.create, expected,
            "target {target}, queued {queued}"
        );
        assert_eq!(decision.reason.kind(), "demand");
        assert_eq!(decision.state.last_scale_up, Some(now));
    }
}

#[test]
fn demand_counts_starting_containers_and_blocks_scale_down() {
    let now = start();
    let config = ScalingConfig {
        min_replicas: 0,
        target_concurrency: 1.0,
        ..config()
    };
    // 3 queued, one per container: 3 wanted; 2 are starting, so 1 more.
    let pool = [init("a"), init("b")];
    let obs = Observation {
        queued_demand: 3,
        ..observe(now, &pool)
    };
    let decision = decide(&obs, &config, &ScalerState::default());
    assert_eq!(decision.create, 1);
    // Next tick, still queued while all three boot: nothing more.
    let pool = [init("a"), init("b"), init("c")];
    let obs = Observation {
        queued_demand: 3,
        ..observe(now, &pool)
    };
    let decision = decide(&obs, &config, &decision.state);
    assert_eq!(decision.create, 0);
    assert_eq!(
        decision.reason,
        Reason::WaitingForStart {
            starting: 3,
            wanted: 3
        }
    );
    // Ready but saturated containers: ready + ⌈queued / target⌉.
    let pool = [busy("a", 20.0, 1), busy("b", 20.0, 1)];
    let obs = Observation {
        queued_demand: 2,
        ..observe(now, &pool)
    };
    let decision = decide(&obs, &config, &low_for_long(now));
    assert_eq!((decision.create, decision.desired), (2, 4));
    assert!(decision.sundown.is_empty());
}

#[test]
fn requested_replicas_apply_at_once_within_bounds() {
    let now = start();
    let in_cooldown = ScalerState {
        last_scale_up: Some(now),
        last_scale_down: Some(now),
        low_since: Some(now),
    };
    let pool = [
        busy("a", 50.0, 3),
        busy("b", 20.0, 0),
        busy("c", 10.0, 0),
        init("d"),
    ];
    let request = |requested| Observation {
        requested_replicas: Some(requested),
        ..observe(now, &pool)
    };
    let config = ScalingConfig {
        min_replicas: 2,
        max_replicas: 6,
        ..config()
    };

    let up = decide(&request(5), &config, &in_cooldown);
    assert_eq!((up.create, up.desired), (1, 5));
    assert_eq!(
        up.reason,
        Reason::Requested {
            requested: 5,
            desired: 5
        }
    );
    assert_eq!(up.state.last_scale_up, Some(now));
    assert_eq!(up.state.low_since, None);

    // Clamped to MAX_CONTAINERS.
    assert_eq!(decide(&request(50), &config, &in_cooldown).desired, 6);

    // Down to 3: INIT d goes first (it never served).
    let down = decide(&request(3), &config, &in_cooldown);
    assert_eq!(ids(&down.sundown), ["d"]);
    assert_eq!(down.desired, 3);
    assert_eq!(down.state.last_scale_down, Some(now));

    // Clamped to MIN_CONTAINERS: 0 becomes 2; d, then the least busy ready one, c.
    let floor = decide(&request(0), &config, &in_cooldown);
    assert_eq!(ids(&floor.sundown), ["d", "c"]);
    assert_eq!(floor.desired, 2);

    // Queued demand overrides a request to shrink.
    let obs = Observation {
        queued_demand: 5,
        ..request(0)
    };
    let demand = decide(&obs, &config, &in_cooldown);
    assert!(demand.sundown.is_empty());
    assert_eq!(demand.desired, 4);
}

#[test]
fn each_up_signal_adds_a_step() {
    let now = start();
    let config = ScalingConfig {
        step: 2,
        ..config()
    };
    let cases: Vec<(&str, Vec<ContainerView>, &str)> = vec![
        // Mean utilisation 76 % > 75 %.
        (
            "high",
            vec![ready("a", 70.0), ready("b", 82.0)],
            "high_load",
        ),
        // One container critical (90 %), mean only 50 %.
        (
            "critical",
            vec![ready("a", 10.0), ready("b", 90.0)],
            "critical",
        ),
        // Every ready container at CPU ≥ 70 %, utilisation moderate.
        (
            "prespawn",
            vec![
                with_cpu(ready("a", 50.0), 70.0),
                with_cpu(ready("b", 50.0), 85.0),
            ],
            "prespawn",
        ),
    ];
    for (name, pool, kind) in cases {
        let decision = decide(&observe(now, &pool), &config, &ScalerState::default());
        assert_eq!(decision.create, 2, "{name}");
        assert_eq!(decision.reason.kind(), kind, "{name}");
        assert_eq!(decision.state.last_scale_up, Some(now), "{name}");
    }

    // Just under each threshold: nothing.
    let calm: Vec<Vec<ContainerView>> = vec![
        vec![ready("a", 70.0), ready("b", 80.0)], // mean exactly 75: not above
        vec![ready("a", 10.0), ready("b", 89.9)],
        vec![
            with_cpu(ready("a", 50.0), 69.9),
            with_cpu(ready("b", 50.0), 99.0),
        ],
    ];
    for pool in calm {
        let decision = decide(&observe(now, &pool), &config, &ScalerState::default());
        assert_eq!(decision.create, 0, "{pool:?}");
        assert_eq!(decision.reason.kind(), "steady", "{pool:?}");
    }
}

#[test]
fn concurrency_signal_and_largest_proposal_wins() {
    let now = start();
    let config = ScalingConfig {
        target_concurrency: 2.0,
        ..config()
    };
    // 7 in flight at 2 per container: ⌈3.5⌉ = 4 containers; the step (2 + 1) is smaller.
    let pool = [busy("a", 80.0, 4), busy("b", 80.0, 3)];
    let decision = decide(&observe(now, &pool), &config, &ScalerState::default());
    assert_eq!(decision.create, 2);
    assert_eq!(
        decision.reason,
        Reason::Concurrency {
            in_flight: 7,
            target: 2.0,
            wanted: 4
        }
    );
    // 5 in flight: ⌈2.5⌉ = 3 = active + step, a tie: the utilisation signal names it.
    let pool = [busy("a", 80.0, 3), busy("b", 80.0, 2)];
    let decision = decide(&observe(now, &pool), &config, &ScalerState::default());
    assert_eq!(decision.create, 1);
    assert_eq!(decision.reason.kind(), "high_load");
    // A big step beats the concurrency signal.
    let big_step = ScalingConfig { step: 4, ..config };
    let decision = decide(&observe(now, &pool), &big_step, &ScalerState::default());
    assert_eq!(decision.create, 4);
    assert_eq!(decision.reason.kind(), "high_load");
}

#[test]
fn load_scale_up_stops_at_the_maximum() {
    let now = start();
    let config = ScalingConfig {
        max_replicas: 3,
        step: 2,
        ..config()
    };
    let pool = [ready("a", 95.0), ready("b", 95.0)];
    let decision = decide(&observe(now, &pool), &config, &ScalerState::default());
    assert_eq!((decision.create, decision.desired), (1, 3));
    let pool = [ready("a", 95.0), ready("b", 95.0), ready("c", 95.0)];
    let decision = decide(&observe(now, &pool), &config, &ScalerState::default());
    assert_eq!(decision.create, 0);
    assert_eq!(decision.reason, Reason::AtMaximum { max: 3, wanted: 5 });
}

#[test]
fn demand_at_the_maximum_and_signals_without_ready_containers() {
    let now = start();
    let config = ScalingConfig {
        max_replicas: 2,
        ..config()
    };
    let pool = [busy("a", 95.0, 8), busy("b", 95.0, 8)];
    let obs = Observation {
        queued_demand: 10,
        ..observe(now, &pool)
    };
    let decision = decide(&obs, &config, &ScalerState::default());
    assert_eq!(decision.create, 0);
    assert_eq!(decision.reason, Reason::AtMaximum { max: 2, wanted: 3 });
    // Only INIT containers: no utilisation signal (prespawn needs at least one ready
    // container), nothing to sundown, and the stabilisation window does not start.
    let booting = [init("a")];
    let decision = decide(&observe(now, &booting), &config, &ScalerState::default());
    assert_eq!(decision.create, 0);
    assert!(decision.sundown.is_empty());
    assert_eq!(
        decision.reason,
        Reason::Steady {
            active: 1,
            utilization: None
        }
    );
    assert_eq!(decision.state, ScalerState::default());
}

#[test]
fn up_cooldown_holds_load_based_scaling() {
    let t0 = start();
    let pool = [ready("a", 90.0)];
    let state = ScalerState {
        last_scale_up: Some(t0),
        ..ScalerState::default()
    };
    let decision = decide(&observe(t0 + secs(10), &pool), &config(), &state);
    assert_eq!(decision.create, 0);
    assert_eq!(
        decision.reason,
        Reason::UpCooldown {
            wanted: 2,
            remaining: secs(20)
        }
    );
    assert_eq!(decision.state, state);
    // Exactly at the end of the cooldown it scales.
    let decision = decide(&observe(t0 + secs(30), &pool), &config(), &state);
    assert_eq!(decision.create, 1);
    assert_eq!(decision.state.last_scale_up, Some(t0 + secs(30)));
}

#[test]
fn utilisation_signals_wait_for_starting_containers() {
    let now = start();
    let pool = [ready("a", 95.0), init("b")];
    let decision = decide(&observe(now, &pool), &config(), &ScalerState::default());
    assert_eq!(decision.create, 0);
    assert_eq!(
        decision.reason,
        Reason::WaitingForStart {
            starting: 1,
            wanted: 3
        }
    );
    // The concurrency signal counts the starting container and does not wait.
    let config = ScalingConfig {
        target_concurrency: 1.0,
        ..config()
    };
    let pool = [busy("a", 50.0, 4), init("b")];
    let decision = decide(&observe(now, &pool), &config, &ScalerState::default());
    assert_eq!(decision.create, 2);
    assert_eq!(decision.reason.kind(), "concurrency");
}

#[test]
fn scale_down_waits_for_the_stabilisation_window() {
    let t0 = start();
    let pool = [ready("a", 10.0), ready("b", 12.0)];
    // First low tick: the window starts.
    let first = decide(&observe(t0, &pool), &config(), &ScalerState::default());
    assert_eq!(first.state.low_since, Some(t0));
    assert_eq!(
        first.reason,
        Reason::Stabilizing {
            utilization: 11.0,
            remaining: secs(60)
        }
    );
    // Still low 59 s later: the window keeps its start.
    let almost = decide(&observe(t0 + secs(59), &pool), &config(), &first.state);
    assert!(almost.sundown.is_empty());
    assert_eq!(almost.state.low_since, Some(t0));
    // 60 s: the least busy goes, the window restarts.
    let down = decide(&observe(t0 + secs(60), &pool), &config(), &almost.state);
    assert_eq!(ids(&down.sundown), ["a"]);
    assert_eq!(down.reason.kind(), "low_load");
    assert_eq!(down.state.last_scale_down, Some(t0 + secs(60)));
    assert_eq!(down.state.low_since, None);

    // A tick that is not low clears the window.
    let medium = [ready("a", 40.0), ready("b", 40.0)];
    let broken = decide(&observe(t0 + secs(30), &medium), &config(), &first.state);
    assert_eq!(broken.state.low_since, None);
    let again = decide(&observe(t0 + secs(61), &pool), &config(), &broken.state);
    assert!(again.sundown.is_empty());
    assert_eq!(again.state.low_since, Some(t0 + secs(61)));
    // No ready container: not low either.
    let booting = [init("a")];
    let none = decide(&observe(t0 + secs(30), &booting), &config(), &first.state);
    assert_eq!(none.state.low_since, None);
}

#[test]
fn scale_down_respects_both_cooldowns() {
    let now = start();
    let pool = [ready("a", 10.0), ready("b", 10.0)];
    let after_down = ScalerState {
        last_scale_down: Some(now - secs(10)),
        ..low_for_long(now)
    };
    let decision = decide(&observe(now, &pool), &config(), &after_down);
    assert!(decision.sundown.is_empty());
    assert_eq!(
        decision.reason,
        Reason::DownCooldown {
            utilization: 10.0,
            remaining: secs(20)
        }
    );
    let after_up = ScalerState {
        last_scale_up: Some(now - secs(25)),
        ..low_for_long(now)
    };
    let decision = decide(&observe(now, &pool), &config(), &after_up);
    assert!(decision.sundown.is_empty());
    assert_eq!(decision.reason.kind(), "down_cooldown");
    let done = ScalerState {
        last_scale_up: Some(now - secs(30)),
        last_scale_down: Some(now - secs(30)),
        ..low_for_long(now)
    };
    assert_eq!(
        decide(&observe(now, &pool), &config(), &done).sundown.len(),
        1
    );
}

#[test]
fn scale_down_never_goes_below_the_minimum() {
    let now = start();
    let config = ScalingConfig {
        min_replicas: 2,
        step: 3,
        ..config()
    };
    let pool = [ready("a", 5.0), ready("b", 5.0)];
    let decision = decide(&observe(now, &pool), &config, &low_for_long(now));
    assert!(decision.sundown.is_empty());
    assert_eq!(decision.reason.kind(), "steady");
    // Step 3 from 4 with a minimum of 2: only 2 go.
    let pool = [
        ready("a", 5.0),
        ready("b", 5.0),
        ready("c", 5.0),
        ready("d", 5.0),
    ];
    let decision = decide(&observe(now, &pool), &config, &low_for_long(now));
    assert_eq!(decision.sundown.len(), 2);
    assert_eq!(decision.desired, 2);
}

#[test]
fn scale_down_guards_against_flapping() {
    let now = start();
    let state = low_for_long(now);
    // Utilisation: 2 × 25 % → 1 × 50 %, past a high threshold of 45 %.
    let config45 = ScalingConfig {
        high: 45.0,
        ..config()
    };
    let pool = [ready("a", 25.0), ready("b", 25.0)];
    let decision = decide(&observe(now, &pool), &config45, &state);
    assert!(decision.sundown.is_empty());
    assert_eq!(
        decision.reason,
        Reason::WouldOverload {
            removed: 1,
            signal: Signal::Utilization,
            projected: 50.0,
            limit: 45.0
        }
    );
    // Step 2 of 3 at 25 %: 25 × 3 / 1 = 75 %, not below 75 %: held, not partially applied.
    let step2 = ScalingConfig {
        step: 2,
        ..config()
    };
    let pool3 = [ready("a", 25.0), ready("b", 25.0), ready("c", 25.0)];
    let decision = decide(&observe(now, &pool3), &step2, &state);
    assert!(decision.sundown.is_empty());
    assert_eq!(decision.reason.kind(), "would_overload");
    // With the default 75 %, 2 × 25 % → 50 % is fine.
    let decision = decide(&observe(now, &pool), &config(), &state);
    assert_eq!(
        decision.reason,
        Reason::LowLoad {
            utilization: 25.0,
            low: 30.0,
            removed: 1,
            projected: 50.0
        }
    );
    // CPU: 2 × 40 % → 80 % ≥ the prespawn 70 %.
    let cpu = [
        with_cpu(ready("a", 20.0), 40.0),
        with_cpu(ready("b", 20.0), 40.0),
    ];
    let decision = decide(&observe(now, &cpu), &config(), &state);
    assert!(decision.sundown.is_empty());
    assert_eq!(
        decision.reason,
        Reason::WouldOverload {
            removed: 1,
            signal: Signal::Cpu,
            projected: 80.0,
            limit: 70.0
        }
    );
    // Concurrency at 4 per container: 9 in flight on 2 would be 4.5; 8 would be 4.
    let target4 = ScalingConfig {
        target_concurrency: 4.0,
        ..config()
    };
    let nine = [busy("a", 10.0, 3), busy("b", 10.0, 3), busy("c", 10.0, 3)];
    let decision = decide(&observe(now, &nine), &target4, &state);
    assert!(decision.sundown.is_empty());
    assert_eq!(
        decision.reason,
        Reason::WouldOverload {
            removed: 1,
            signal: Signal::Concurrency,
            projected: 4.5,
            limit: 4.0
        }
    );
    let eight = [busy("a", 10.0, 2), busy("b", 10.0, 3), busy("c", 10.0, 3)];
    let decision = decide(&observe(now, &eight), &target4, &state);
    assert_eq!(ids(&decision.sundown), ["a"]);
}

#[test]
fn scale_to_zero_only_when_nothing_is_in_flight() {
    let now = start();
    let config = ScalingConfig {
        min_replicas: 0,
        ..config()
    };
    let idle = [ready("a", 2.0)];
    let decision = decide(&observe(now, &idle), &config, &low_for_long(now));
    assert_eq!(ids(&decision.sundown), ["a"]);
    assert_eq!(decision.desired, 0);
    let working = [busy("a", 2.0, 1)];
    let decision = decide(&observe(now, &working), &config, &low_for_long(now));
    assert!(decision.sundown.is_empty());
    assert_eq!(decision.reason.kind(), "would_overload");
    // Three at 28 % in one step of 3: the whole load, 84 %, would land on the one container
    // that scaling from zero brings back, past the high threshold: held.
    let step3 = ScalingConfig { step: 3, ..config };
    let three = [ready("a", 28.0), ready("b", 28.0), ready("c", 28.0)];
    let decision = decide(&observe(now, &three), &step3, &low_for_long(now));
    assert!(decision.sundown.is_empty());
    assert_eq!(
        decision.reason,
        Reason::WouldOverload {
            removed: 3,
            signal: Signal::Utilization,
            projected: 84.0,
            limit: 75.0
        }
    );
    // At 20 % each, 60 % fits: all three go.
    let light = [ready("a", 20.0), ready("b", 20.0), ready("c", 20.0)];
    let decision = decide(&observe(now, &light), &step3, &low_for_long(now));
    assert_eq!(decision.sundown.len(), 3);
    assert_eq!(decision.desired, 0);
}

#[test]
fn victims_are_the_least_busy_ready_containers() {
    let now = start();
    let config = ScalingConfig {
        min_replicas: 1,
        step: 3,
        ..config()
    };
    let pool = [
        busy("e", 5.0, 2),
        busy("d", 20.0, 0),
        busy("c", 10.0, 0),
        busy("b", 10.0, 0),
        init("a"),
        busy("f", 1.0, 9),
    ];
    // Mean (5 + 20 + 10 + 10 + 1) / 5 = 9.2 %; 3 of 5 ready go: projected 9.2 × 5 / 2 = 23 %.
    let decision = decide(&observe(now, &pool), &config, &low_for_long(now));
    // 0 in flight first (b and c at 10 % by id, then d at 20 %); e (2) and f (9) and INIT a stay.
    assert_eq!(ids(&decision.sundown), ["b", "c", "d"]);
}

#[test]
fn a_scale_down_removes_what_never_served_before_what_serves() {
    let now = start();
    let config = ScalingConfig {
        min_replicas: 1,
        ..config()
    };
    // One serving container (idle right now), one ready that never served, two starting (one
    // still being launched), one unhealthy.
    let pool = [
        ready("serving", 5.0),
        fresh("fresh", 1.0),
        init("launching:app-worker-5"),
        init("starting"),
        unhealthy("sick", 3),
    ];
    let request = |requested| Observation {
        requested_replicas: Some(requested),
        ..observe(now, &pool)
    };
    // The removal order: unhealthy, starting (by id), never served, then serving.
    let order = [
        "sick",
        "launching:app-worker-5",
        "starting",
        "fresh",
        "serving",
    ];
    for keep in (1..=5).rev() {
        let decision = decide(&request(keep), &config, &ScalerState::default());
        assert_eq!(ids(&decision.sundown), order[..5 - keep], "down to {keep}");
        assert_eq!(decision.desired, keep);
    }

    // Even when the serving one is the least busy, a container that never served goes first.
    let pool = [ready("serving", 1.0), fresh("fresh", 40.0)];
    let decision = decide(
        &Observation {
            requested_replicas: Some(1),
            ..observe(now, &pool)
        },
        &config,
        &ScalerState::default(),
    );
    assert_eq!(ids(&decision.sundown), ["fresh"]);

    // So does a load-based scale-down (from ready containers only).
    let pool = [
        ready("serving", 10.0),
        fresh("fresh", 20.0),
        init("starting"),
    ];
    let decision = decide(&observe(now, &pool), &config, &low_for_long(now));
    assert_eq!(decision.reason.kind(), "low_load");
    assert_eq!(ids(&decision.sundown), ["fresh"]);
}

#[test]
fn the_last_request_wins_within_one_decision() {
    let now = start();
    let config = ScalingConfig {
        min_replicas: 1,
        ..config()
    };
    let request = |pool, requested| Observation {
        requested_replicas: Some(requested),
        ..observe(now, pool)
    };
    // One serving container; 5 requested: 4 created.
    let one = [ready("a", 10.0)];
    let up = decide(&request(&one, 5), &config, &ScalerState::default());
    assert_eq!((up.create, up.desired), (4, 5));
    // 150 ms later, before any is ready, 1 requested: the four go, the serving one stays.
    let booting = [
        ready("a", 10.0),
        init("launching:w-2"),
        init("launching:w-3"),
        init("b"),
        init("c"),
    ];
    let down = decide(&request(&booting, 1), &config, &up.state);
    assert_eq!(down.desired, 1);
    assert_eq!(
        ids(&down.sundown),
        ["b", "c", "launching:w-2", "launching:w-3"]
    );
    // Two of them ready by then (never served): the same.
    let partly = [
        ready("a", 10.0),
        fresh("b", 0.0),
        fresh("c", 0.0),
        init("launching:w-2"),
        init("launching:w-3"),
    ];
    let down = decide(&request(&partly, 1), &config, &up.state);
    assert_eq!(down.desired, 1);
    assert!(
        !down.sundown.contains(&"a".to_owned()),
        "{:?}",
        down.sundown
    );
}

#[test]
fn an_unhealthy_container_holds_its_place_but_is_no_capacity() {
    let now = start();
    let config = ScalingConfig {
        min_replicas: 2,
        target_concurrency: 2.0,
        ..config()
    };
    // It counts toward the minimum: a stall does not start a container by itself.
    let pool = [ready("a", 10.0), unhealthy("sick", 0)];
    let decision = decide(&observe(now, &pool), &config, &ScalerState::default());
    assert_eq!((decision.create, decision.desired), (0, 2));
    assert!(decision.sundown.is_empty(), "{:?}", decision.sundown);

    // Queued demand is not covered by it (a starting container would cover it).
    let sick = [unhealthy("sick", 0)];
    let demand = Observation {
        queued_demand: 1,
        ..observe(now, &sick)
    };
    let config_zero = ScalingConfig {
        min_replicas: 0,
        ..config.clone()
    };
    let decision = decide(&demand, &config_zero, &ScalerState::default());
    assert_eq!((decision.create, decision.reason.kind()), (1, "demand"));
    let starting = [init("starting")];
    let covered = Observation {
        queued_demand: 1,
        ..observe(now, &starting)
    };
    assert_eq!(
        decide(&covered, &config_zero, &ScalerState::default()).create,
        0
    );

    // Its stalled requests are not load the others carry, and it asks for one more: 4 in
    // flight on a at 2 per container -> 2 serving + 1 for the sick one.
    let pool = [busy("a", 20.0, 4), unhealthy("sick", 9)];
    let decision = decide(&observe(now, &pool), &config, &ScalerState::default());
    assert_eq!(
        decision.reason,
        Reason::Concurrency {
            in_flight: 4,
            target: 2.0,
            wanted: 3
        }
    );
    assert_eq!(decision.create, 1);

    // The utilisation signals use the ready containers and do not wait for it to recover.
    let pool = [ready("a", 80.0), ready("b", 80.0), unhealthy("sick", 0)];
    let decision = decide(&observe(now, &pool), &config, &ScalerState::default());
    assert_eq!((decision.create, decision.reason.kind()), (1, "high_load"));

    // A load-based scale-down takes ready containers only; the controller decides its fate.
    let config = ScalingConfig {
        min_replicas: 1,
        target_concurrency: 0.0,
        ..config
    };
    let pool = [ready("a", 5.0), ready("b", 5.0), unhealthy("sick", 0)];
    let decision = decide(&observe(now, &pool), &config, &low_for_long(now));
    assert_eq!(decision.reason.kind(), "low_load");
    assert_eq!(ids(&decision.sundown), ["a"]);
}

#[test]
fn sundown_containers_stop_when_drained_or_timed_out() {
    let t0 = start();
    let now = t0 + secs(100);
    let pool = [
        sundown("drained", 0, now),
        sundown("draining", 2, now - secs(29)),
        sundown("timed-out", 2, now - secs(30)),
        ContainerView {
            sundown_since: None,
            ..sundown("unknown-since", 1, now)
        },
        busy("serving", 50.0, 0),
        init("starting"),
    ];
    let decision = decide(&observe(now, &pool), &config(), &ScalerState::default());
    assert_eq!(ids(&decision.stop), ["drained", "timed-out"]);
    assert!(decision.sundown.is_empty());
}

#[test]
fn reasons_read_as_sentences() {
    let reason = Reason::HighLoad {
        utilization: 81.25,
        high: 75.0,
    };
    assert_eq!(
        reason.to_string(),
        "mean utilisation 81.2% above the high threshold of 75.0%"
    );
    let reason = Reason::Demand {
        queued: 4,
        ready: 0,
        starting: 1,
        wanted: 2,
    };
    assert_eq!(
        reason.to_string(),
        "4 requests queued with no backend (0 ready, 1 starting): scaling to 2"
    );
    let reason = Reason::UpCooldown {
        wanted: 3,
        remaining: Duration::from_millis(12_500),
    };
    assert_eq!(
        reason.to_string(),
        "3 containers wanted, scale-up cooldown for another 12.5s"
    );
    let reason = Reason::WouldOverload {
        removed: 1,
        signal: Signal::Concurrency,
        projected: 4.5,
        limit: 4.0,
    };
    assert_eq!(
        reason.to_string(),
        "load is low but removing 1 would bring requests in flight per container to 4.5 \
         (limit 4.0)"
    );
    let steady = Reason::Steady {
        active: 0,
        utilization: None,
    };
    assert_eq!(steady.to_string(), "steady at 0 containers, none ready");
    assert_eq!(steady.kind(), "steady");
}

#[test]
fn validation_names_the_variable() {
    assert_eq!(config().validate(), Ok(()));
    let cases = [
        (
            ScalingConfig {
                max_replicas: 0,
                min_replicas: 0,
                ..config()
            },
            "MAX_CONTAINERS",
        ),
        (
            ScalingConfig {
                min_replicas: 11,
                ..config()
            },
            "MIN_CONTAINERS",
        ),
        (
            ScalingConfig {
                step: 0,
                ..config()
            },
            "SCALE_STEP",
        ),
        (
            ScalingConfig {
                target_concurrency: -1.0,
                ..config()
            },
            "TARGET_CONCURRENCY",
        ),
        (
            ScalingConfig {
                target_concurrency: f64::INFINITY,
                ..config()
            },
            "TARGET_CONCURRENCY",
        ),
        (
            ScalingConfig {
                low: 80.0,
                ..config()
            },
            "LOW_LOAD_THRESHOLD",
        ),
        (
            ScalingConfig {
                critical: 60.0,
                ..config()
            },
            "CRITICAL_LOAD_THRESHOLD",
        ),
        (
            ScalingConfig {
                prespawn_cpu: 101.0,
                ..config()
            },
            "PRESPAWN_THRESHOLD",
        ),
    ];
    for (config, name) in cases {
        let err = config.validate().unwrap_err();
        assert!(err.contains(name), "{err}");
    }
    // Minimum 0 (scale to zero) is valid.
    let zero = ScalingConfig {
        min_replicas: 0,
        ..config()
    };
    assert_eq!(zero.validate(), Ok(()));
}

// Property tests.

prop_compose! {
    fn valid_config()(
        min in 0_usize..4,
        span in 0_usize..8,
        step in 1_usize..4,
        low in 1.0_f64..50.0,
        high_gap in 1.0_f64..40.0,
        critical_gap in 0.0_f64..10.0,
        prespawn in 10.0_f64..=100.0,
        target in prop_oneof![Just(0.0), 0.5_f64..8.0],
        cooldown_up in 0_u64..60,
        cooldown_down in 0_u64..60,
        stabilization in 0_u64..120,
        drain in 0_u64..60,
    ) -> ScalingConfig {
        let high = low + high_gap;
        ScalingConfig {
            min_replicas: min,
            max_replicas: (min + span).max(1),
            step,
            high,
            low,
            critical: (high + critical_gap).min(100.0),
            prespawn_cpu: prespawn,
            target_concurrency: target,
            target_work_seconds: 2.0,
            worker_cpus: 1.0,
            cooldown_up: secs(cooldown_up),
            cooldown_down: secs(cooldown_down),
            stabilization: secs(stabilization),
            drain_timeout: secs(drain),
        }
    }
}

fn category() -> impl Strategy<Value = Category> {
    prop_oneof![
        Just(Category::Init),
        Just(Category::Low),
        Just(Category::Medium),
        Just(Category::High),
        Just(Category::Sundown),
    ]
}

/// Containers described relative to `now`: (category, utilisation, cpu, in flight, sundown
/// age in seconds, served, unhealthy). An unhealthy one is published INIT.
type Described = (Category, f64, f64, u64, u64, bool, bool);

fn described() -> impl Strategy<Value = Described> {
    (
        category(),
        0.0_f64..=100.0,
        0.0_f64..=100.0,
        0_u64..20,
        0_u64..120,
        any::<bool>(),
        prop::bool::weighted(0.15),
    )
}

fn build(now: Instant, described: &[Described], config: &ScalingConfig) -> Vec<ContainerView> {
    described
        .iter()
        .enumerate()
        .map(
            |(i, &(category, utilization, cpu_util, in_flight, age, served, unhealthy))| {
                let unhealthy = unhealthy && category != Category::Sundown;
                ContainerView {
                    id: format!("c{i}"),
                    category: if unhealthy { Category::Init } else { category },
                    utilization,
                    cpu_util,
                    critical: utilization >= config.critical,
                    in_flight,
                    work_seconds: 0.0,
                    sundown_since: (category == Category::Sundown).then(|| now - secs(age)),
                    served,
                    unhealthy,
                }
            },
        )
        .collect()
}

fn ago(now: Instant, age: Option<u64>) -> Option<Instant> {
    age.map(|age| now - secs(age))
}

proptest! {
    /// The count stays within bounds; only SUNDOWN containers stop; only active ones sundown,
    /// and only ready ones on low load; a serving container goes only after every container
    /// that is unhealthy, starting or never served.
    #[test]
    fn decisions_respect_bounds_and_lifecycle(
        config in valid_config(),
        described in prop::collection::vec(described(), 0..16),
        queued in prop_oneof![Just(0_u64), 0_u64..40],
        requested in prop::option::of(0_usize..20),
        last_up in prop::option::of(0_u64..200),
        last_down in prop::option::of(0_u64..200),
        low_since in prop::option::of(0_u64..200),
    ) {
        let now = start();
        let containers = build(now, &described, &config);
        let state = ScalerState {
            last_scale_up: ago(now, last_up),
            last_scale_down: ago(now, last_down),
            low_since: ago(now, low_since),
        };
        let obs = Observation {
            now,
            containers: &containers,
            queued_demand: queued,
            queued_work_seconds: 0.0,
            requested_replicas: requested,
        };
        let decision = decide(&obs, &config, &state);

        let active = containers.iter().filter(|c| c.category != Category::Sundown).count();
        let after = active + decision.create - decision.sundown.len();
        prop_assert_eq!(after, decision.desired);
        if (config.min_replicas..=config.max_replicas).contains(&active) {
            prop_assert!(
                (config.min_replicas..=config.max_replicas).contains(&after),
                "{} -> {} outside {}..={}: {:?}",
                active, after, config.min_replicas, config.max_replicas, decision.reason
            );
        }
        prop_assert!(decision.create == 0 || decision.sundown.is_empty());
        let category_of = |id: &str| containers.iter().find(|c| c.id == id).map(|c| c.category);
        for id in &decision.stop {
            prop_assert_eq!(category_of(id), Some(Category::Sundown));
        }
        let view_of = |id: &str| containers.iter().find(|c| c.id == id);
        let serving = |c: &ContainerView| c.is_ready() && c.served;
        let low_load = matches!(decision.reason, Reason::LowLoad { .. });
        for id in &decision.sundown {
            let view = view_of(id).unwrap();
            prop_assert!(view.category != Category::Sundown, "sundown {} again", id);
            if low_load {
                prop_assert!(
                    view.is_ready(),
                    "low load sundowns {} of category {:?}", id, view.category
                );
            }
            if serving(view) {
                // Whatever may go before a serving container went first.
                let spared = containers.iter().any(|c| {
                    c.is_active()
                        && !serving(c)
                        && (c.is_ready() || !low_load)
                        && !decision.sundown.contains(&c.id)
                });
                prop_assert!(!spared, "serving {} removed before an idle one", id);
            }
        }
        let unique: HashSet<_> = decision.sundown.iter().chain(&decision.stop).collect();
        prop_assert_eq!(unique.len(), decision.sundown.len() + decision.stop.len());
    }

    /// Queued demand with no active container always creates at least one.
    #[test]
    fn demand_on_an_empty_pool_always_creates(
        config in valid_config(),
        draining in prop::collection::vec(0_u64..5, 0..4),
        queued in 1_u64..1000,
        requested in prop::option::of(0_usize..20),
        last_up in prop::option::of(0_u64..200),
        last_down in prop::option::of(0_u64..200),
    ) {
        let now = start();
        let containers: Vec<_> = draining
            .iter()
            .enumerate()
            .map(|(i, &in_flight)| sundown(&format!("s{i}"), in_flight, now))
            .collect();
        let state = ScalerState {
            last_scale_up: ago(now, last_up),
            last_scale_down: ago(now, last_down),
            low_since: None,
        };
        let obs = Observation {
            now,
            containers: &containers,
            queued_demand: queued,
            queued_work_seconds: 0.0,
            requested_replicas: requested,
        };
        let decision = decide(&obs, &config, &state);
        prop_assert!(decision.create >= 1, "{:?}", decision.reason);
        prop_assert!(decision.sundown.is_empty());
    }

    /// Under a constant load the container count moves in one direction, then settles: it
    /// never goes up after going down or down after going up.
    #[test]
    fn constant_load_does_not_flap(
        config in valid_config(),
        initial in 1_usize..12,
        load in 0.0_f64..600.0,
        cpu_ratio in 0.5_f64..2.0,
        in_flight_per_percent in 0.0_f64..0.2,
        steps in prop::collection::vec(1_u64..=30, 40..80),
    ) {
        let initial = initial.clamp(config.min_replicas.max(1), config.max_replicas);
        let total_in_flight = (load * in_flight_per_percent).round() as u64;
        let mut now = start();
        let mut next_id = 0_usize;
        let mut fresh_id = || {
            next_id += 1;
            format!("c{next_id}")
        };
        // (id, category); load is spread over the ready ones at each step.
        let mut pool: Vec<(String, Category)> =
            (0..initial).map(|_| (fresh_id(), Category::Medium)).collect();
        let mut state = ScalerState::default();
        let mut counts = vec![initial];

        for dt in steps {
            now += secs(dt);
            let ready = pool.iter().filter(|(_, c)| *c == Category::Medium).count();
            let mut ready_seen = 0_u64;
            let views: Vec<ContainerView> = pool
                .iter()
                .map(|(id, category)| {
                    let mut view = ContainerView {
                        id: id.clone(),
                        category: *category,
                        utilization: 0.0,
                        cpu_util: 0.0,
                        critical: false,
                        in_flight: 0,
                        work_seconds: 0.0,
                        sundown_since: (*category == Category::Sundown).then_some(now),
                        served: true,
                        unhealthy: false,
                    };
                    if *category == Category::Medium {
                        let share = load / ready as f64;
                        view.utilization = share.min(100.0);
                        view.cpu_util = (share * cpu_ratio).min(100.0);
                        view.critical = view.utilization >= config.critical;
                        // Spread the in-flight total exactly: the first ones take the remainder.
                        let ready = ready as u64;
                        view.in_flight = total_in_flight / ready
                            + u64::from(ready_seen < total_in_flight % ready);
                        ready_seen += 1;
                    }
                    view
                })
                .collect();
            let obs = observe(now, &views);
            let decision = decide(&obs, &config, &state);
            state = decision.state.clone();

            // Carry it out: stop, sundown, the INIT ones become ready, create new INIT ones.
            pool.retain(|(id, _)| !decision.stop.contains(id));
            for (id, category) in &mut pool {
                if decision.sundown.contains(id) {
                    *category = Category::Sundown;
                } else if *category == Category::Init {
                    *category = Category::Medium;
                }
            }
            for _ in 0..decision.create {
                pool.push((fresh_id(), Category::Init));
            }
            let active = pool.iter().filter(|(_, c)| *c != Category::Sundown).count();
            prop_assert_eq!(active, decision.desired);
            counts.push(active);
        }

        let mut went_up = false;
        let mut went_down = false;
        for pair in counts.windows(2) {
            went_up |= pair[1] > pair[0];
            went_down |= pair[1] < pair[0];
        }
        prop_assert!(!(went_up && went_down), "flapped: {:?}", counts);
    }
}
