use super::*;

#[test]
fn bodies_are_padded_to_their_size() {
    assert_eq!(body(3, 0), br#"{"intensity":3}"#);
    assert_eq!(body(3, 20), br#"{"intensity":3}"#, "too small to pad");
    for size in [25, 100, 4096] {
        let bytes = body(7, size);
        assert_eq!(bytes.len() as u64, size);
        let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(json["intensity"], 7);
    }
}

#[test]
fn errors_read_on_one_short_line() {
    let long = "x".repeat(500) + "\nmore";
    let text = truncate(long);
    assert!(text.chars().count() <= 201);
    assert!(!text.contains('\n'));
}
