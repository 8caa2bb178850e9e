//! The chunked transfer coding (RFC 9112 section 7.1), decoded incrementally: each call takes
//! the bytes at hand and says how many it consumed and which of them are body data, so the
//! proxy relays the data as it arrives without copying it.

use std::ops::Range;

use super::{Refusal, is_tchar};

/// Bounds on the framing around the data.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ChunkLimits {
    /// Longest chunk extension (`;name=value...`) of one chunk, in bytes.
    pub max_extension_bytes: usize,
    /// Largest trailer section, in bytes (field lines with their CRLF).
    pub max_trailer_bytes: usize,
    /// Most trailer fields.
    pub max_trailer_fields: usize,
}

impl Default for ChunkLimits {
    fn default() -> Self {
        Self {
            max_extension_bytes: 256,
            max_trailer_bytes: 8 << 10,
            max_trailer_fields: 32,
        }
    }
}

/// Hex digits of a chunk size: 16 make a `u64`; more (leading zeros included) are refused.
const MAX_SIZE_DIGITS: u8 = 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Reading the chunk size's hex digits (`digits` so far).
    Size {
        digits: u8,
    },
    /// Whitespace after the size (BWS before a `;`, RFC 9112 section 7.1.1).
    SizeSpace,
    /// Inside a chunk extension, `len` bytes so far.
    Extension {
        len: usize,
    },
    /// The LF after the chunk size line's CR.
    SizeLf,
    /// Chunk data, this many bytes still to come.
    Data {
        left: u64,
    },
    /// The CRLF after a chunk's data.
    DataCr,
    DataLf,
    /// At the start of a trailer line (or of the final CRLF).
    TrailerStart,
    /// In a trailer field's name.
    TrailerName,
    /// In a trailer field's value.
    TrailerValue,
    /// The LF after a trailer line's CR.
    TrailerLf,
    /// The LF of the final CRLF.
    EndLf,
    /// The body is complete: later bytes are the next message's.
    Done,
}

/// A chunked body being decoded.
#[derive(Clone, Debug)]
pub(crate) struct ChunkedDecoder {
    state: State,
    limits: ChunkLimits,
    /// The chunk size being read.
    size: u64,
    trailer_bytes: usize,
    trailer_fields: usize,
    /// Body bytes decoded so far.
    decoded: u64,
}

/// What one [`ChunkedDecoder::decode`] call found in its input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Decoded {
    /// Bytes of the input used; the rest (only when `done`, or when `data` is not empty) is
    /// for the next call or the next message.
    pub consumed: usize,
    /// Body data: a range of the input, within `..consumed`, possibly empty.
    pub data: Range<usize>,
    /// The body ended (last chunk, trailers and the final CRLF all read).
    pub done: bool,
}

impl ChunkedDecoder {
    pub fn new(limits: ChunkLimits) -> Self {
        Self {
            state: State::Size { digits: 0 },
            limits,
            size: 0,
            trailer_bytes: 0,
            trailer_fields: 0,
            decoded: 0,
        }
    }

    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Body bytes decoded so far.
    pub fn decoded(&self) -> u64 {
        self.decoded
    }

    /// Decodes from `input` up to the end of the first data span it meets (or the end of
    /// the body, or of the input). Call again with `input[consumed..]` while that is not
    /// empty and not `done`. Framing errors are 400s (a client's body; a backend's is the
    /// caller's 502): sizes that are not hex (`0x10`, `-1`, empty), sizes over 16 digits or
    /// past `u64`, bare LF or CR, a chunk's data not followed by CRLF, control bytes in an
    /// extension or a trailer, obs-fold, extensions and trailers over their limits.
    pub fn decode(&mut self, input: &[u8]) -> Result<Decoded, Refusal> {
        let mut at = 0usize;
        while let Some(&b) = input.get(at) {
            match self.state {
                State::Size { digits } => match hex(b) {
                    Some(d) => {
                        if digits >= MAX_SIZE_DIGITS {
                            return Err(bad("the chunk size is too long"));
                        }
                        self.size = (self.size << 4) | u64::from(d);
                        self.state = State::Size { digits: digits + 1 };
                    }
                    None if digits == 0 => return Err(bad("the chunk size is not hex")),
                    None => match b {
                        b'\r' => self.state = State::SizeLf,
                        b';' => self.state = State::Extension { len: 0 },
                        b' ' | b'\t' => self.state = State::SizeSpace,
                        _ => return Err(bad("the chunk size is not hex")),
                    },
                },
                State::SizeSpace => match b {
                    b' ' | b'\t' => {}
                    b';' => self.state = State::Extension { len: 0 },
                    b'\r' => self.state = State::SizeLf,
                    _ => return Err(bad("the chunk size line is malformed")),
                },
                State::Extension { len } => {
                    if b == b'\r' {
                        self.state = State::SizeLf;
                    } else if len >= self.limits.max_extension_bytes {
                        return Err(bad("the chunk extension is too long"));
                    } else if b != b'\t' && (b < 0x20 || b == 0x7f) {
                        return Err(bad("the chunk extension is malformed"));
                    } else {
                        self.state = State::Extension { len: len + 1 };
                    }
                }
                State::SizeLf => {
                    if b != b'\n' {
                        return Err(bad("the chunk size line does not end in CRLF"));
                    }
                    self.state = if self.size == 0 {
                        State::TrailerStart
                    } else {
                        State::Data { left: self.size }
                    };
                    self.size = 0;
                }
                State::Data { left } => {
                    let available = input.len() - at;
                    let take = usize::try_from(left).unwrap_or(usize::MAX).min(available);
                    let left = left - take as u64;
                    self.decoded += take as u64;
                    self.state = if left == 0 {
                        State::DataCr
                    } else {
                        State::Data { left }
                    };
                    return Ok(Decoded {
                        consumed: at + take,
                        data: at..at + take,
                        done: false,
                    });
                }
                State::DataCr => {
                    if b != b'\r' {
                        return Err(bad("the chunk data is not followed by CRLF"));
                    }
                    self.state = State::DataLf;
                }
                State::DataLf => {
                    if b != b'\n' {
                        return Err(bad("the chunk data is not followed by CRLF"));
                    }
                    self.state = State::Size { digits: 0 };
                }
                State::TrailerStart => {
                    if b == b'\r' {
                        self.state = State::EndLf;
                    } else if is_tchar(b) {
                        self.trailer_fields += 1;
                        if self.trailer_fields > self.limits.max_trailer_fields {
                            return Err(bad("too many trailer fields"));
                        }
                        self.count_trailer()?;
                        self.state = State::TrailerName;
                    } else {
                        // Obs-fold (SP or HTAB first), a bare LF, anything else.
                        return Err(bad("the trailer section is malformed"));
                    }
                }
                State::TrailerName => {
                    self.count_trailer()?;
                    if b == b':' {
                        self.state = State::TrailerValue;
                    } else if !is_tchar(b) {
                        return Err(bad("a trailer field's name is malformed"));
                    }
                }
                State::TrailerValue => {
                    self.count_trailer()?;
                    if b == b'\r' {
                        self.state = State::TrailerLf;
                    } else if b != b'\t' && (b < 0x20 || b == 0x7f) {
                        return Err(bad("a trailer field's value is malformed"));
                    }
                }
                State::TrailerLf => {
                    self.count_trailer()?;
                    if b != b'\n' {
                        return Err(bad("a trailer line does not end in CRLF"));
                    }
                    self.state = State::TrailerStart;
                }
                State::EndLf => {
                    if b != b'\n' {
                        return Err(bad("the chunked body does not end in CRLF"));
                    }
                    self.state = State::Done;
                    return Ok(Decoded {
                        consumed: at + 1,
                        data: at + 1..at + 1,
                        done: true,
                    });
                }
                State::Done => break,
            }
            at += 1;
        }
        Ok(Decoded {
            consumed: at,
            data: at..at,
            done: self.state == State::Done,
        })
    }

    fn count_trailer(&mut self) -> Result<(), Refusal> {
        self.trailer_bytes += 1;
        if self.trailer_bytes > self.limits.max_trailer_bytes {
            return Err(bad("the trailer section is too large"));
        }
        Ok(())
    }
}

/// A hex digit's value (RFC 9110 section 5.6.1's HEXDIG, either case).
fn hex(b: u8) -> Option<u8> {
    char::from(b)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

fn bad(message: &'static str) -> Refusal {
    Refusal::bad_request(message)
}

#[cfg(test)]
mod tests;
