use super::*;
use crate::{model::Worker, score::Availability};

fn settings() -> Settings {
    Settings {
        app: "app".into(),
        health: POLICY,
        ..Settings::from_config(&crate::config::Config::defaults())
    }
}

fn world() -> World {
    World::new(settings())
}

fn member(name: &str) -> Member {
    let instance = Instance {
        worker: Worker {
            id: format!("id-{name}"),
            name: name.into(),
            address: format!("{name}:8080"),
            dns_name: name.into(),
            core_id: None,
            created_at_ms: 0,
        },
        running: true,
        paused: false,
        cpu_limit_cores: 1.0,
    };
    Member::new(instance, Availability::new(20, 10, 0.2), Instant::now())
}

/// A balancer's report at `at` with these backends and nothing queued.
fn report<'a>(
    at: Instant,
    backends: impl IntoIterator<Item = (&'a str, BackendReport)>,
) -> BalancerReport {
    BalancerReport {
        at,
        queued_without_backend: 0,
        queued_for_slot: 0,
        queued_work_seconds: 0.0,
        backends: backends
            .into_iter()
            .map(|(address, backend)| (address.to_owned(), backend))
            .collect(),
    }
}

const POLICY: HealthPolicy = HealthPolicy {
    threshold: 2,
    timeout: Duration::from_secs(30),
};

#[test]
fn a_ready_member_leaves_the_queue_after_the_threshold_and_recovers_or_is_given_up() {
    let t0 = Instant::now();
    let mut m = member("w-1");
    m.phase = Phase::Ready;
    m.classification.category = Category::Low;
    assert_eq!(m.probed(false, t0, &POLICY), ProbeVerdict::Same);
    assert_eq!(m.category(), Category::Low, "one failure is tolerated");
    // A success in between resets the count.
    assert_eq!(m.probed(true, t0, &POLICY), ProbeVerdict::Same);
    assert_eq!(m.probed(false, t0, &POLICY), ProbeVerdict::Same);
    assert_eq!(
        m.probed(false, t0, &POLICY),
        ProbeVerdict::Unhealthy { failures: 2 }
    );
    assert_eq!(m.category(), Category::Init, "published as not routable");
    assert!(m.is_active(), "it holds its place in the count");
    let t1 = t0 + Duration::from_secs(5);
    assert_eq!(m.probed(false, t1, &POLICY), ProbeVerdict::Same);
    assert_eq!(
        m.probed(true, t1, &POLICY),
        ProbeVerdict::Recovered {
            after: Duration::from_secs(5)
        }
    );
    assert_eq!((m.phase, m.category()), (Phase::Ready, Category::Low));

    // Down again, and for UNHEALTHY_TIMEOUT: given up.
    m.probed(false, t1, &POLICY);
    m.probed(false, t1, &POLICY);
    let t2 = t1 + Duration::from_secs(29);
    assert_eq!(m.probed(false, t2, &POLICY), ProbeVerdict::Same);
    assert_eq!(
        m.probed(false, t2 + Duration::from_secs(1), &POLICY),
        ProbeVerdict::Replace {
            after: Duration::from_secs(30)
        }
    );
    assert_eq!(m.phase, Phase::Stopping);
    assert!(!m.is_active());
}

#[test]
fn starting_and_sundown_members_have_no_health_transition() {
    let now = Instant::now();
    let mut starting = member("w-1");
    let mut sundown = member("w-2");
    sundown.phase = Phase::Sundown { since: now };
    for _ in 0..5 {
        assert_eq!(starting.probed(false, now, &POLICY), ProbeVerdict::Same);
        assert_eq!(sundown.probed(false, now, &POLICY), ProbeVerdict::Same);
    }
    assert!(matches!(starting.phase, Phase::Starting { .. }));
    assert!(matches!(sundown.phase, Phase::Sundown { .. }));
}

#[test]
fn new_names_skip_every_name_in_use_or_taken_on_the_engine() {
    let mut world = world();
    let m = member("app-worker-1");
    world.members.insert(m.instance.worker.id.clone(), m);
    world.launching.push(Launch {
        spec: LaunchSpec {
            name: "app-worker-2".into(),
            core_id: None,
            epoch: 0,
        },
        cancelled: false,
    });
    // An exited container and a stranger's container with the prefix.
    world.taken_names.insert("app-worker-3".into());
    world.taken_names.insert("app-worker-5".into());
    world.taken_names.insert("other-worker-4".into());
    assert_eq!(world.next_name("app"), "app-worker-4");
    world.taken_names.insert("app-worker-4".into());
    assert_eq!(world.next_name("app"), "app-worker-6");
}

fn crash(name: &str, code: i64) -> Crash {
    Crash {
        name: name.into(),
        code: Some(code),
        cause: format!("exited with code {code}"),
        logs: vec!["first".into(), "flag --bogus not known".into()],
    }
}

#[test]
fn crash_waits_double_up_to_the_cap_and_a_ready_container_resets_them() {
    let t0 = Instant::now();
    let (initial, max) = (Duration::from_secs(1), Duration::from_secs(5));
    let mut crash_loop = CrashLoop::default();
    let waits: Vec<u64> = (0..5)
        .map(|_| {
            crash_loop
                .crashed(crash("w-1", 2), initial, max, t0)
                .as_secs()
        })
        .collect();
    assert_eq!(waits, [1, 2, 4, 5, 5]);
    assert!(crash_loop.blocks(t0 + Duration::from_secs(4)));
    assert!(!crash_loop.blocks(t0 + Duration::from_secs(5)));
    crash_loop.reset();
    assert_eq!(
        crash_loop.crashed(crash("w-1", 2), initial, max, t0),
        initial
    );
}

#[test]
fn the_pool_says_why_no_container_is_ready() {
    let now = Instant::now();
    let mut world = world();
    assert_eq!(
        world.pool_status(now).reason.as_deref(),
        Some("no container: the desired count is 0")
    );
    let mut starting = member("app-worker-1");
    starting.probe_error = Some("GET /health answered 404".into());
    world
        .members
        .insert(starting.instance.worker.id.clone(), starting);
    let reason = world.pool_status(now).reason.unwrap();
    assert!(
        reason.starts_with("app-worker-1 not ready after 0 s: GET /health answered 404"),
        "{reason}"
    );

    world.crash.crashed(
        crash("app-worker-2", 3),
        Duration::from_secs(8),
        Duration::from_secs(60),
        now,
    );
    assert!(world.launches_blocked(now));
    let reason = world.pool_status(now).reason.unwrap();
    assert_eq!(
        reason,
        "crash loop (1 in a row): app-worker-2 exited with code 3, next launch in 8 s: flag --bogus not known"
    );

    let mut ready = member("app-worker-3");
    ready.phase = Phase::Ready;
    world
        .members
        .insert(ready.instance.worker.id.clone(), ready);
    assert_eq!(
        world.pool_status(now),
        PoolStatus {
            ready: 1,
            reason: None
        }
    );
}

#[test]
fn without_the_workers_stats_in_flight_comes_from_the_balancers() {
    let now = Instant::now();
    let mut world = world();
    let mut m = member("app-worker-1");
    m.worker_stats = Some(false);
    let address = m.instance.worker.address.clone();
    world.members.insert(m.instance.worker.id.clone(), m);
    for (balancer, count) in [("b1", 3), ("b2", 4)] {
        world.balancers.insert(
            balancer.into(),
            report(
                now,
                [(
                    address.as_str(),
                    BackendReport {
                        in_flight: count,
                        work_seconds: 0.0,
                    },
                )],
            ),
        );
    }
    let views = world.views(now);
    assert_eq!((views[0].in_flight, views[0].served), (7, true));
    assert_eq!(world.statuses(now)[0].in_flight_source, "balancers");
}

#[test]
fn a_cancelled_launch_is_no_longer_counted_nor_seen_by_the_scaler() {
    let mut world = world();
    for name in ["w-1", "w-2"] {
        world.launching.push(Launch {
            spec: LaunchSpec {
                name: name.into(),
                core_id: None,
                epoch: 0,
            },
            cancelled: false,
        });
    }
    assert_eq!(world.active_count(), 2);
    assert!(world.cancel_launch("w-1"));
    assert!(!world.cancel_launch("w-1"), "cancelled once");
    assert!(!world.cancel_launch("w-9"));
    assert_eq!(world.active_count(), 1);
    let views = world.views(Instant::now());
    let ids: Vec<&str> = views.iter().map(|v| v.id.as_str()).collect();
    assert_eq!(ids, ["launching:w-2"]);
}

fn ready(world: &mut World, name: &str) -> String {
    let mut m = member(name);
    m.phase = Phase::Ready;
    let id = m.instance.worker.id.clone();
    world.members.insert(id.clone(), m);
    id
}

fn decision(create: usize, sundown: &[&str], stop: &[&str]) -> crate::decide::Decision {
    crate::decide::Decision {
        create,
        sundown: sundown.iter().map(|id| (*id).to_owned()).collect(),
        stop: stop.iter().map(|id| (*id).to_owned()).collect(),
        reason: crate::decide::Reason::Requested {
            requested: 0,
            desired: 0,
        },
        state: ScalerState::default(),
        desired: 0,
    }
}

#[test]
fn apply_owns_every_phase_change_of_a_decision_and_says_what_to_do() {
    let now = Instant::now();
    let mut world = world();
    let a = ready(&mut world, "app-worker-1");
    let b = ready(&mut world, "app-worker-2");

    // Two launches and one SUNDOWN: the names are reserved, the count persisted once.
    let effects = world.apply(&decision(2, &[&a], &[]), now);
    assert_eq!(world.active_count(), 3, "b + two launches");
    assert!(matches!(world.members[&a].phase, Phase::Sundown { .. }));
    let launched: Vec<&str> = effects
        .actions
        .iter()
        .filter_map(|action| match action {
            Action::Launch(spec) => Some(spec.name.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(launched, ["app-worker-3", "app-worker-4"]);
    assert_eq!(
        effects
            .overrides
            .as_ref()
            .map(|(_, o)| o.default_containers),
        Some(Some(3))
    );
    assert_eq!(
        effects.persist.len(),
        1,
        "the SUNDOWN member's registry entry"
    );
    assert_eq!(effects.persist[0].category, Category::Sundown);
    let kinds: Vec<_> = effects.events.iter().map(|e| e.kind).collect();
    use crate::store::EventKind;
    assert_eq!(
        kinds,
        [EventKind::Created, EventKind::ScaleDown, EventKind::Sundown]
    );
    assert!(effects.events.iter().all(|e| e.replicas == 3));
    assert!(effects.publish);

    // SUNDOWN again is no change; a stop applies to SUNDOWN members only; a launch cancelled.
    let effects = world.apply(
        &decision(0, &[&a, "launching:app-worker-4"], &[&a, &b]),
        now,
    );
    assert_eq!(world.members[&a].phase, Phase::Stopping);
    assert_eq!(world.members[&b].phase, Phase::Ready, "b was not SUNDOWN");
    assert_eq!(
        effects.actions,
        [Action::Stop {
            id: a.clone(),
            done: "drained and stopped"
        }]
    );
    assert_eq!(world.active_count(), 2, "b + app-worker-3");
    assert_eq!(
        effects.overrides.map(|(_, o)| o.default_containers),
        Some(Some(2))
    );

    // The stop's end: the member leaves the world and the registry.
    let effects = world.stopped(&a, "drained and stopped", now);
    assert!(!world.members.contains_key(&a));
    assert_eq!(effects.forget, [a]);
    assert!(effects.publish && effects.wake);
}

#[test]
fn a_lost_serving_member_is_replaced_and_a_starting_one_is_a_crash() {
    let now = Instant::now();
    let mut world = world();
    let serving = ready(&mut world, "app-worker-1");
    let starting = member("app-worker-2");
    let starting_id = starting.instance.worker.id.clone();
    world.members.insert(starting_id.clone(), starting);

    let effects = world.exited(&serving, "died", Some(137), now);
    assert_eq!(world.requested, Some(2), "its place is kept");
    assert!(effects.wake);
    assert!(matches!(effects.actions[..], [Action::Remove { .. }]));

    let effects = world.exited(&starting_id, "died", Some(3), now);
    assert!(
        world.launches_blocked(now),
        "the crash-loop back-off holds launches"
    );
    assert!(matches!(
        &effects.actions[..],
        [Action::CrashReport {
            member: false,
            crashes: 1,
            ..
        }]
    ));
    assert_eq!(effects.forget, [starting_id]);
}

#[test]
fn a_follower_keeps_the_leaders_standby_as_a_standby_even_if_it_saw_it_running() {
    let now = Instant::now();
    let mut world = world();
    world.set_leading(false);
    let instance = member("app-worker-3").instance;
    let listing = |instance: &Instance, paused: bool| Listing {
        instances: vec![Instance {
            paused,
            ..instance.clone()
        }],
        taken: None,
    };
    // Seen while the leader prepared it: running, not paused yet, in no registry.
    let _ = world.reconcile(listing(&instance, false), &[], now);
    assert_eq!(world.member_ids(), ["id-app-worker-3"]);
    // Paused by the leader: a standby, not a member.
    let _ = world.reconcile(listing(&instance, true), &[], now);
    assert!(world.member_ids().is_empty());
    assert_eq!(world.standby_names(), ["app-worker-3"]);
    // The leader's own registered worker, paused (docker pause): a member still.
    let instance = member("app-worker-1").instance;
    let registered = crate::store::ContainerRecord {
        worker: instance.worker.clone(),
        category: Category::Low,
        sundown_since_ms: None,
    };
    let _ = world.reconcile(
        listing(&instance, false),
        std::slice::from_ref(&registered),
        now,
    );
    let _ = world.reconcile(listing(&instance, true), &[registered], now);
    assert_eq!(world.member_ids(), ["id-app-worker-1"]);
}

#[test]
fn a_change_of_the_routing_set_is_told_apart_from_a_change_of_scores() {
    let now = Instant::now();
    let mut world = world();
    let a = ready(&mut world, "app-worker-1");
    let b = ready(&mut world, "app-worker-2");
    assert!(world.routing_changed(), "nothing published yet");
    assert!(world.next_publication(now).is_some());
    assert!(!world.routing_changed());

    // A score changes: paced.
    world.members.get_mut(&a).unwrap().overall = 12.0;
    assert!(!world.routing_changed(), "a score is not the routing set");
    assert!(world.next_publication(now).is_some());

    // A new worker (INIT) appears: at once.
    let starting = member("app-worker-3");
    let c = starting.instance.worker.id.clone();
    world.members.insert(c.clone(), starting);
    assert!(world.routing_changed(), "a worker added");
    world.next_publication(now);
    // It becomes ready: at once.
    world.members.get_mut(&c).unwrap().phase = Phase::Ready;
    assert!(world.routing_changed(), "a worker starts taking requests");
    world.next_publication(now);

    // SUNDOWN, then gone: at once each time.
    assert!(world.drain(&b, now).is_some());
    assert!(world.routing_changed(), "a worker in SUNDOWN");
    world.next_publication(now);
    world.members.remove(&b);
    assert!(world.routing_changed(), "a worker gone");
    world.next_publication(now);
    world.members.remove(&a);
    assert!(world.routing_changed(), "a serving worker gone");
}

#[test]
fn the_balancers_listed_are_those_with_a_fresh_report() {
    let mut world = world();
    let now = Instant::now();
    let scaling = crate::config::Config::defaults().scaling();
    let empty = |at| report(at, []);
    world.report("balancer-on-n2", empty(now), &scaling);
    world.report("balancer-on-n1", empty(now), &scaling);
    world.report("balancer-gone", empty(now), &scaling);
    // A later report of the third, then none: it ages out.
    let later = now + REPORT_TTL;
    world.report("balancer-on-n1", empty(later), &scaling);
    world.report("balancer-on-n2", empty(later), &scaling);
    assert_eq!(
        world.reporting_balancers(later),
        vec!["balancer-on-n1", "balancer-on-n2"]
    );
    assert_eq!(world.reporting_balancers(now).len(), 3);
}

#[test]
fn a_new_leader_publishes_at_once_even_an_empty_pool() {
    let now = Instant::now();
    let mut world = world();
    assert_eq!(world.next_publication(now), None, "nothing to publish yet");
    let effects = world.take_over(&[], ConfigOverrides::default(), 0, "leads".into(), now);
    assert!(effects.publish);
    assert!(
        world.routing_changed(),
        "a takeover's publication waits for no pace"
    );
    assert_eq!(world.next_publication(now), Some((1, Vec::new())));
    assert_eq!(world.next_publication(now), None, "then only on change");
}

#[test]
fn reconcile_leaves_a_worker_whose_launch_is_under_way_and_removes_exited_leftovers() {
    let now = Instant::now();
    let mut world = world();
    // A Swarm service created, its task not running yet: its launch has not returned.
    world.launching.push(Launch {
        spec: LaunchSpec {
            name: "app-worker-2".into(),
            core_id: None,
            epoch: 1,
        },
        cancelled: false,
    });
    let not_running = |name: &str| Instance {
        running: false,
        ..member(name).instance
    };
    let listing = Listing {
        instances: vec![not_running("app-worker-2"), not_running("app-worker-7")],
        taken: None,
    };
    let effects = world.reconcile(listing, &[], now);
    let removed: Vec<&str> = effects
        .actions
        .iter()
        .filter_map(|action| match action {
            Action::Remove { id, .. } => Some(id.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(removed, ["id-app-worker-7"], "{:?}", effects.actions);
}

#[test]
fn work_in_flight_and_queued_add_up_over_fresh_reports_and_expire_with_them() {
    let now = Instant::now();
    let mut world = world();
    let m = member("app-worker-1");
    let address = m.instance.worker.address.clone();
    world.members.insert(m.instance.worker.id.clone(), m);
    let scaling = crate::config::Config::defaults().scaling();
    let busy = |in_flight, work_seconds| BackendReport {
        in_flight,
        work_seconds,
    };
    let (_, wake) = world.report(
        "b1",
        report(now, [(address.as_str(), busy(1, 0.5))]),
        &scaling,
    );
    assert!(!wake, "0.5 s in flight is within 2 s on one container");
    let (load, wake) = world.report(
        "b1",
        BalancerReport {
            queued_for_slot: 2,
            queued_work_seconds: 1.5,
            ..report(now, [(address.as_str(), busy(1, 0.5))])
        },
        &scaling,
    );
    assert!(wake, "work queued for a slot: decide now");
    assert_eq!(load.queued_for_slot, 2);
    let (load, _) = world.report(
        "b2",
        report(
            now,
            [
                (address.as_str(), busy(2, 1.0)),
                ("elsewhere:8080", busy(1, 4.0)),
            ],
        ),
        &scaling,
    );
    assert_eq!(
        load,
        BalancerLoad {
            queued_without_backend: 0,
            queued_for_slot: 2,
            queued_work_seconds: 1.5,
            work_in_flight_seconds: 5.5,
        }
    );
    let views = world.views(now);
    assert_eq!((views[0].in_flight, views[0].work_seconds), (3, 1.5));
    assert_eq!(world.statuses(now)[0].work_seconds, 1.5);
    assert_eq!(world.queued_work_seconds(now), 1.5);
    // Balancers that stop reporting count no more.
    let later = now + REPORT_TTL;
    assert_eq!(world.balancer_load(later), BalancerLoad::default());
    assert_eq!(world.views(later)[0].work_seconds, 0.0);
}

#[test]
fn each_container_is_published_with_its_concurrency() {
    use crate::config::{WorkerConcurrency, parse_cpuset};
    let now = Instant::now();
    let published = |settings: Settings, pinned: bool| {
        let mut world = World::new(settings);
        let mut m = member("app-worker-1");
        m.instance.worker.core_id = pinned.then_some(3);
        world.members.insert(m.instance.worker.id.clone(), m);
        let concurrency = world.queue_items(now)[0].concurrency;
        assert_eq!(world.statuses(now)[0].concurrency, concurrency);
        concurrency
    };
    // Unset: as the default worker sizes its pool, else unlimited.
    assert_eq!(published(settings(), false), 0, "no CPU limit known");
    let cpus = |cpus| Settings {
        worker_cpus: Some(cpus),
        ..settings()
    };
    assert_eq!(published(cpus(1.0), false), 1);
    assert_eq!(published(cpus(1.5), false), 2);
    assert_eq!(published(cpus(0.5), false), 1);
    assert_eq!(published(cpus(4.0), true), 1, "pinned to one core");
    let pinned = Settings {
        cpuset: Some(parse_cpuset("1-3").unwrap().0),
        ..settings()
    };
    assert_eq!(published(pinned, true), 1);
    // Set: that number for every container, 0 = unlimited.
    let fixed = |n| Settings {
        concurrency: WorkerConcurrency::Fixed(n),
        ..cpus(4.0)
    };
    assert_eq!(published(fixed(8), false), 8);
    assert_eq!(published(fixed(0), true), 0);
}
