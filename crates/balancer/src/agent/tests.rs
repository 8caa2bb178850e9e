use super::*;

#[test]
fn within_a_connection_only_newer_snapshots_apply() {
    let order = Order { epoch: Some(2) };
    let last = Some((2, 10));
    assert_eq!(order.judge((2, 11), last), Verdict::Apply);
    assert_eq!(order.judge((2, 10), last), Verdict::Ignore);
    assert_eq!(order.judge((2, 9), last), Verdict::Ignore);
    assert_eq!(order.judge((1, 50), last), Verdict::Ignore);
    // A new leader: its seq restarts, its epoch is higher.
    assert_eq!(order.judge((3, 1), last), Verdict::Apply);
}

#[test]
fn a_new_connection_needs_at_least_the_applied_epoch() {
    let mut order = Order::default();
    assert_eq!(order.judge((0, 0), None), Verdict::Apply, "first ever");
    order.applied((4, 30));
    // seq may restart on a new connection (an agent restarted, or another agent).
    assert_eq!(order.judge((4, 1), None), Verdict::Apply);
    assert_eq!(order.judge((5, 1), None), Verdict::Apply);
    assert_eq!(order.judge((3, 99), None), Verdict::Refuse);
    order.applied((5, 1));
    assert_eq!(order.judge((4, 30), None), Verdict::Refuse);
}

#[test]
fn report_urls_with_an_ip_address_are_never_looked_up() {
    assert_eq!(
        Target::parse("http://10.0.0.5:9002"),
        Ok(Target::Address("10.0.0.5:9002".parse().unwrap()))
    );
    assert_eq!(
        Target::parse("http://[::1]:9002/"),
        Ok(Target::Address("[::1]:9002".parse().unwrap()))
    );
    assert_eq!(
        Target::parse("http://10.0.0.5"),
        Ok(Target::Address("10.0.0.5:80".parse().unwrap()))
    );
    assert_eq!(
        Target::parse("http://tasks.deployment-agent:9002"),
        Ok(Target::Host {
            host: "tasks.deployment-agent".into(),
            port: 9002
        })
    );
    assert!(Target::parse("not a url").is_err());
}
