use std::time::Duration;

use super::parse_duration;

#[test]
fn durations_accept_units_and_bare_seconds() {
    assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
    assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
    assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
    assert_eq!(parse_duration("5"), Ok(Duration::from_secs(5)));
    assert_eq!(parse_duration(" 0.25 "), Ok(Duration::from_millis(250)));
}

#[test]
fn durations_reject_garbage_with_a_hint() {
    for bad in ["", "soon", "-1", "2 parsecs", "NaN"] {
        let err = parse_duration(bad).unwrap_err();
        assert!(!err.is_empty(), "{bad:?} gave an empty error");
    }
    assert!(parse_duration("soon").unwrap_err().contains("500ms"));
}
