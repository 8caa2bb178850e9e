use super::*;
use crate::trace::Kind;

fn rows(n: u64) -> Vec<TraceRow> {
    (0..n)
        .map(|id| TraceRow {
            id,
            arrival_s: id as f64,
            kind: Kind::Work,
            intensity: 1,
            service_s: Some(0.5),
            size_bytes: 0,
            job: None,
        })
        .collect()
}

fn ids(share: &[&TraceRow]) -> Vec<u64> {
    share.iter().map(|r| r.id).collect()
}

#[test]
fn rows_are_dealt_round_robin_or_in_blocks() {
    let rows = rows(7);
    let shares = assign(&rows, 3, Assign::RoundRobin);
    assert_eq!(ids(&shares[0]), [0, 3, 6]);
    assert_eq!(ids(&shares[1]), [1, 4]);
    assert_eq!(ids(&shares[2]), [2, 5]);
    let blocks = assign(&rows, 3, Assign::Blocks);
    assert_eq!(ids(&blocks[0]), [0, 1, 2]);
    assert_eq!(ids(&blocks[1]), [3, 4, 5]);
    assert_eq!(ids(&blocks[2]), [6]);
    let many = assign(&rows[..2], 4, Assign::Blocks);
    assert_eq!(many.iter().map(Vec::len).collect::<Vec<_>>(), [1, 1, 0, 0]);
}

#[test]
fn bodies_carry_demand_unless_service_is_constant() {
    let rows = rows(2);
    let share: Vec<&TraceRow> = rows.iter().collect();
    let mut options = SplitOptions {
        workers: vec!["http://w".into()],
        st: Some(2.0),
        delay: 0.25,
        assign: Assign::RoundRobin,
        constant_service: false,
    };
    let body = request_body(&share, &options);
    assert_eq!(body["st"], 2.0);
    assert_eq!(body["delay"], 0.25);
    assert_eq!(body["rows"][1]["service_s"], 0.5);
    assert_eq!(body["rows"][1]["id"], 1);
    options.constant_service = true;
    let body = request_body(&share, &options);
    assert!(body["rows"][1].get("service_s").is_none());
}
