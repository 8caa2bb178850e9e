use std::{error::Error as _, sync::Arc};

use super::*;
use crate::backend::Backends;

const SECOND: u64 = 1_000_000_000;

#[test]
fn minimum_then_ratio() {
    let budget = RetryBudget::new(0.5, 2);
    let now = 5 * SECOND;
    assert!(budget.withdraw(now));
    assert!(budget.withdraw(now));
    assert!(!budget.withdraw(now), "the minimum is spent");
    for _ in 0..4 {
        budget.deposit(now);
    }
    assert!(budget.withdraw(now));
    assert!(budget.withdraw(now));
    assert!(!budget.withdraw(now), "2 + 0.5 x 4 = 4 retries");
}

#[test]
fn a_new_second_refills_and_remembers_the_last_one() {
    let budget = RetryBudget::new(0.5, 0);
    for _ in 0..10 {
        budget.deposit(SECOND);
    }
    for _ in 0..5 {
        assert!(budget.withdraw(SECOND));
    }
    assert!(!budget.withdraw(SECOND));
    // Next second: the previous second's 10 requests still count.
    assert!(budget.withdraw(2 * SECOND));
    // After a gap, nothing is remembered.
    assert!(!budget.withdraw(10 * SECOND));
}

/// A table of `n` routable backends, and the backends.
fn backends(n: usize) -> (Backends, Vec<Arc<Backend>>) {
    let backends = crate::policy::tests::table(&vec![50.0; n]);
    let list = backends
        .load()
        .candidates
        .iter()
        .map(|c| Arc::clone(&c.backend))
        .collect();
    (backends, list)
}

fn refused() -> Outcome {
    Outcome::Failed(SendError::Connect(std::io::Error::from(
        std::io::ErrorKind::ConnectionRefused,
    )))
}

#[test]
fn connect_failures_are_retried_outside_the_budget_then_given_up() {
    let (_table, list) = backends(3);
    let none = RetryBudget::new(0.0, 0);
    // Not even idempotent: the request reached no backend.
    let mut retry = RetryPolicy::new(false);
    for backend in &list[..2] {
        retry.sent_to(backend, false, true);
        assert_eq!(
            retry.decide(refused(), &none, 0),
            Verdict::Retry(RetryReason::Connect)
        );
    }
    retry.sent_to(&list[2], false, false);
    assert_eq!(retry.decide(refused(), &none, 0), Verdict::GiveUp);
    let error = retry.take_error();
    assert!(matches!(error, ProxyError::Connect(Some(_))), "{error:?}");
    let cause = error.source().expect("the connect failure is the source");
    assert_eq!(cause.to_string(), "connect");
    assert!(cause.source().is_some(), "and the I/O error its own");
}

#[test]
fn an_answered_attempt_is_retried_once_when_safe_and_the_budget_allows() {
    let (_table, list) = backends(3);
    let budget = RetryBudget::new(0.0, 10);
    let mut retry = RetryPolicy::new(true);
    retry.sent_to(&list[0], true, true);
    assert!(retry.may_resend());
    assert_eq!(
        retry.decide(Outcome::Unavailable, &budget, 0),
        Verdict::Retry(RetryReason::Status)
    );
    assert!(matches!(retry.take_error(), ProxyError::Upstream(None)));
    retry.sent_to(&list[1], true, true);
    assert!(!retry.may_resend(), "one retry at most");
    assert_eq!(
        retry.decide(Outcome::Unavailable, &budget, 0),
        Verdict::GiveUp
    );
}

#[test]
fn no_retry_when_unsafe_alone_or_over_budget() {
    let (_table, list) = backends(2);
    let budget = RetryBudget::new(0.0, 10);
    let cases = [
        (false, true, true, "not idempotent"),
        (true, false, true, "a streamed body"),
        (true, true, false, "no other backend"),
    ];
    for (idempotent, replayable, others, why) in cases {
        let mut retry = RetryPolicy::new(idempotent);
        retry.sent_to(&list[0], replayable, others);
        assert!(!retry.may_resend(), "{why}");
        assert_eq!(
            retry.decide(Outcome::Unavailable, &budget, 0),
            Verdict::GiveUp,
            "{why}"
        );
    }
    let spent = RetryBudget::new(0.0, 0);
    let mut retry = RetryPolicy::new(true);
    retry.sent_to(&list[0], true, true);
    assert_eq!(
        retry.decide(Outcome::Unavailable, &spent, 0),
        Verdict::Denied
    );
    assert!(retry.may_resend(), "a denied retry is not one");
}

#[test]
fn a_removed_backend_sends_the_request_elsewhere_if_there_is_one() {
    let (table, list) = backends(2);
    let budget = RetryBudget::new(0.0, 10);
    let mut retry = RetryPolicy::new(true);
    retry.sent_to(&list[0], true, true);
    assert!(retry.elsewhere(&table.load()));
    assert_eq!(
        retry.decide(Outcome::Removed { elsewhere: false }, &budget, 0),
        Verdict::GiveUp,
        "nowhere to go: the answer is still awaited"
    );
    assert_eq!(
        retry.decide(Outcome::Removed { elsewhere: true }, &budget, 0),
        Verdict::Retry(RetryReason::Removed)
    );
    retry.sent_to(&list[1], true, true);
    assert!(!retry.elsewhere(&table.load()), "both tried");
}
