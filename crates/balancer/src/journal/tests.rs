use std::{collections::HashSet, sync::Arc, time::Instant};

use http::Method;

use super::*;
use crate::metrics::RetryReason;

fn identity(name: &str) -> Arc<Identity> {
    Arc::new(Identity {
        id: format!("id-{name}"),
        name: name.into(),
        address: format!("{name}:8080"),
    })
}

fn journal(capacity: usize, shards: usize) -> Journal {
    Journal::new(capacity, shards, false, 7)
}

fn record(journal: &Journal, shard: usize, id: &str, status: u16) {
    let trip = journal.start(Some(id.as_bytes()), Instant::now(), &Method::GET, b"/p");
    journal.finish(shard, trip, status, None);
}

#[test]
fn only_well_formed_ids_are_taken() {
    // The rule itself is `common::request_id`'s, tested there.
    let journal = journal(10, 1);
    let made = journal.start(
        Some(b"no spaces allowed"),
        Instant::now(),
        &Method::GET,
        b"/",
    );
    assert_ne!(made.id().as_bytes(), b"no spaces allowed");
    let kept = journal.start(Some(b"ok-1"), Instant::now(), &Method::GET, b"/");
    assert_eq!(kept.id().as_bytes(), b"ok-1");
}

#[test]
fn made_ids_are_32_hex_digits_and_do_not_repeat() {
    let ids = Ids::new(1);
    let mut seen = HashSet::new();
    for n in 0..10_000u64 {
        let id = String::from_utf8(ids.next().to_vec()).unwrap();
        // The digits are the two mixed words', lowercase.
        let words = ids.salts.map(|salt| mix(n ^ salt));
        assert_eq!(id, format!("{:016x}{:016x}", words[0], words[1]));
        assert!(seen.insert(id));
    }
    // Another process's ids (another seed) start elsewhere.
    let other = String::from_utf8(Ids::new(2).next().to_vec()).unwrap();
    assert!(!seen.contains(&other));
}

#[test]
fn hex8_gives_every_digit() {
    for value in [
        0,
        1,
        9,
        10,
        15,
        0x89ab_cdef,
        0x0123_4567,
        0xffff_ffff,
        0xa0b0_c0d0,
    ] {
        assert_eq!(
            hex8(value),
            *format!("{value:08x}").as_bytes(),
            "{value:#x}"
        );
    }
}

#[test]
fn a_trip_records_each_attempt_its_outcome_and_the_retry() {
    let journal = journal(10, 1);
    let (a, b) = (identity("a"), identity("b"));
    let mut trip = journal.start(Some(b"r-1"), Instant::now(), &Method::POST, b"/submit?q=1");
    trip.cache(CacheUse::Miss);
    trip.sent(&a, Instant::now());
    trip.ended(
        Ended::ConnectFailed,
        0,
        Some(Verdict::Retry(RetryReason::Connect)),
    );
    trip.sent(&a, Instant::now());
    trip.ended(Ended::Answered, 503, Some(Verdict::Denied));
    trip.sent(&b, Instant::now());
    trip.ended(Ended::Answered, 200, None);
    journal.finish(0, trip, 200, None);
    let record = journal.find("r-1").unwrap();
    assert_eq!(record["method"], "POST");
    assert_eq!(record["path"], "/submit?q=1");
    assert_eq!(record["cache"], "miss");
    assert_eq!(record["backends"], serde_json::json!(["id-a", "id-b"]));
    let attempts = record["attempts"].as_array().unwrap();
    let outline: Vec<(&str, &Value, &Value, &Value)> = attempts
        .iter()
        .map(|a| {
            (
                a["name"].as_str().unwrap(),
                &a["outcome"],
                &a["status"],
                &a["retry"],
            )
        })
        .collect();
    assert_eq!(
        outline,
        [
            (
                "a",
                &json!("connect_failed"),
                &Value::Null,
                &json!("connect")
            ),
            ("a", &json!("answered"), &json!(503), &json!("denied")),
            ("b", &json!("answered"), &json!(200), &Value::Null),
        ]
    );
    assert_eq!(attempts[1]["address"], "a:8080");
}

#[test]
fn each_ring_keeps_its_newest_records_and_lists_merge_newest_first() {
    let journal = journal(4, 2);
    for n in 0..5 {
        record(
            &journal,
            n % 2,
            &format!("r-{n}"),
            if n == 3 { 502 } else { 200 },
        );
    }
    // Two per ring: r-0 was dropped from ring 0 (r-0, r-2, r-4).
    assert!(journal.find("r-0").is_none());
    assert!(journal.find("r-1").is_some());
    let (all, kept) = journal.recent(StatusFilter::Any, 10);
    assert_eq!(kept, 4);
    let ids: HashSet<&str> = all.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(ids, HashSet::from(["r-1", "r-2", "r-3", "r-4"]));
    let (errors, _) = journal.recent(StatusFilter::Class(5), 10);
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0]["id"], "r-3");
    let (limited, _) = journal.recent(StatusFilter::Code(200), 1);
    assert_eq!(limited.len(), 1);
    // A reused id: the newest record answers.
    record(&journal, 0, "r-1", 404);
    assert_eq!(journal.find("r-1").unwrap()["status"], 404);
    // No history at all.
    let none = Journal::new(0, 2, false, 1);
    record(&none, 0, "x", 200);
    assert!(none.find("x").is_none());
    assert_eq!(none.recent(StatusFilter::Any, 10).1, 0);
}

#[test]
fn status_filters_parse_codes_and_classes() {
    assert_eq!(StatusFilter::parse("5xx"), Ok(StatusFilter::Class(5)));
    assert_eq!(StatusFilter::parse("2XX"), Ok(StatusFilter::Class(2)));
    assert_eq!(StatusFilter::parse("404"), Ok(StatusFilter::Code(404)));
    for bad in ["", "5x", "6xx", "0xx", "abc", "5xxx", "50a"] {
        assert!(StatusFilter::parse(bad).is_err(), "{bad:?}");
    }
    assert!(StatusFilter::Class(4).admits(499));
    assert!(!StatusFilter::Class(4).admits(500));
}

#[test]
fn long_targets_are_cut_on_a_character_boundary() {
    let mut target = "/".to_owned();
    target.push_str(&"é".repeat(400));
    let journal = journal(10, 1);
    let trip = journal.start(
        Some(b"long"),
        Instant::now(),
        &Method::GET,
        target.as_bytes(),
    );
    journal.finish(0, trip, 200, None);
    let path = journal.find("long").unwrap()["path"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        path.len() <= MAX_PATH_BYTES && path.len() >= MAX_PATH_BYTES - 1,
        "{}",
        path.len()
    );
    assert!(!path.contains('\u{fffd}'));
}
