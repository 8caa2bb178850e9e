use super::*;

#[test]
fn engine_lines_lose_their_timestamp_into_at_ms() {
    let line = docker::engine_line("stderr", "2024-01-01T12:00:00.123456789Z job done req-1\n");
    assert_eq!(
        line,
        LogLine {
            at_ms: Some(1_704_110_400_123),
            stream: "stderr",
            line: "job done req-1".into(),
        }
    );
    // Docker trims trailing zeros of the fraction.
    let line = docker::engine_line("stdout", "2024-01-01T12:00:00.5Z x");
    assert_eq!(line.at_ms, Some(1_704_110_400_500));
    // No timestamp: the line is kept whole.
    let line = docker::engine_line("stdout", "plain words");
    assert_eq!((line.at_ms, line.line.as_str()), (None, "plain words"));
}

#[test]
fn cut_keeps_whole_characters() {
    assert_eq!(cut("abc", 5), "abc");
    assert_eq!(cut("abcdef", 3), "abc");
    assert_eq!(cut("aé", 2), "a");
}
