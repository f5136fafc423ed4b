//! Reads a model file without its weight payloads, for planning.
//!
//! In: a seekable protobuf `ModelProto` stream. Out: the same message re-encoded without
//! the large data fields of the graph's initializers (`raw_data`, `float_data`,
//! `int32_data`, `double_data`, `uint64_data` longer than [`KEEP_LIMIT`] bytes), which are
//! skipped with a seek, never read. Dims, types, names and small tensors (a `Reshape`
//! target) are kept, so the importer sees every shape. Planning a 500 MB model thus reads
//! a few kilobytes and holds only those in memory.
//!
//! The walk only understands protobuf framing (tag, wire type, length); the result is
//! decoded by prost like any model, so field types are checked there.

use super::OnnxError;
use std::io::{BufRead, BufReader, Read, Seek};
use std::path::Path;

/// Payload fields at most this long are kept (small int64 tensors are read by the importer).
pub const KEEP_LIMIT: u64 = 4096;

/// Integer tensors (indices and shapes, never weights) keep payloads up to this long: the
/// dynamo exporter's Gather of ConvNeXt's pooled map reads 768 int64 indices (6 KiB).
pub const INT_KEEP_LIMIT: u64 = 65536;

/// All integer payloads over [`KEEP_LIMIT`] together keep at most this much: a file of many
/// index tensors is held no more than a file of weights.
pub const INT_KEEP_TOTAL: u64 = 1 << 20;

/// TensorProto data types INT32 (6) and INT64 (7).
pub fn is_integer(data_type: i32) -> bool {
    matches!(data_type, 6 | 7)
}

#[derive(Clone, Copy, Debug)]
enum Msg {
    Model,
    Graph,
    Tensor,
}

/// The length-delimited fields walked into rather than copied.
fn child(msg: Msg, field: u64) -> Option<Msg> {
    match (msg, field) {
        (Msg::Model, 7) => Some(Msg::Graph),  // ModelProto.graph
        (Msg::Graph, 5) => Some(Msg::Tensor), // GraphProto.initializer
        _ => None,
    }
}

/// TensorProto's data fields: float_data 4, int32_data 5, raw_data 9, double_data 10, uint64_data 11.
fn is_payload(msg: Msg, field: u64) -> bool {
    matches!(msg, Msg::Tensor) && matches!(field, 4 | 5 | 9 | 10 | 11)
}

struct Walker<R> {
    r: R,
    pos: u64,
    /// Integer payload bytes kept over [`KEEP_LIMIT`] so far (at most [`INT_KEEP_TOTAL`]).
    int_kept: u64,
}

fn corrupt(what: String) -> OnnxError {
    OnnxError::Decode(what)
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

impl<R: BufRead + Seek> Walker<R> {
    fn byte(&mut self, end: u64) -> Result<u8, OnnxError> {
        if self.pos >= end {
            return Err(corrupt(format!("truncated or corrupted: a field runs past byte {end}")));
        }
        let mut b = [0u8];
        self.r.read_exact(&mut b).map_err(|e| corrupt(format!("truncated or corrupted at byte {}: {e}", self.pos)))?;
        self.pos += 1;
        Ok(b[0])
    }

    fn varint(&mut self, end: u64) -> Result<u64, OnnxError> {
        let start = self.pos;
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte(end)?;
            v |= ((b & 0x7f) as u64) << shift;
            if b < 0x80 {
                return Ok(v);
            }
        }
        Err(corrupt(format!("corrupted: an overlong varint at byte {start}")))
    }

    fn copy(&mut self, n: u64, out: &mut Vec<u8>) -> Result<(), OnnxError> {
        let start = out.len();
        let got = (&mut self.r).take(n).read_to_end(out).map_err(|e| corrupt(format!("cannot read at byte {}: {e}", self.pos)))?;
        if (got as u64) < n {
            out.truncate(start);
            return Err(corrupt(format!("truncated: the file ends at byte {}", self.pos + got as u64)));
        }
        self.pos += n;
        Ok(())
    }

    fn skip(&mut self, n: u64) -> Result<(), OnnxError> {
        let off = i64::try_from(n).map_err(|_| corrupt(format!("corrupted: a length of {n} bytes at byte {}", self.pos)))?;
        self.r.seek_relative(off).map_err(|e| corrupt(format!("cannot seek at byte {}: {e}", self.pos)))?;
        self.pos += n;
        Ok(())
    }

    /// Copies the fields of a `msg` that ends at byte `end` into `out`, slimmed.
    fn message(&mut self, msg: Msg, end: u64, out: &mut Vec<u8>) -> Result<(), OnnxError> {
        // A tensor's data_type (field 2) comes before its payload as ONNX writes it; an
        // integer tensor keeps a longer one ([`INT_KEEP_LIMIT`]).
        let mut limit = KEEP_LIMIT;
        while self.pos < end {
            let at = self.pos;
            let key = self.varint(end)?;
            let (field, wire) = (key >> 3, key & 7);
            if field == 0 {
                return Err(corrupt(format!("not protobuf: field number 0 at byte {at}")));
            }
            match wire {
                0 => {
                    let v = self.varint(end)?;
                    if matches!(msg, Msg::Tensor) && field == 2 {
                        limit = if i32::try_from(v).is_ok_and(is_integer) { INT_KEEP_LIMIT } else { KEEP_LIMIT };
                    }
                    put_varint(out, key);
                    put_varint(out, v);
                }
                1 | 5 => {
                    let n = if wire == 1 { 8 } else { 4 };
                    if self.pos + n > end {
                        return Err(corrupt(format!("truncated or corrupted: the field at byte {at} runs past byte {end}")));
                    }
                    put_varint(out, key);
                    self.copy(n, out)?;
                }
                2 => {
                    let len = self.varint(end)?;
                    if len > end - self.pos {
                        return Err(corrupt(format!("truncated or corrupted: the field at byte {at} ({len} bytes) runs past byte {end}")));
                    }
                    if let Some(sub) = child(msg, field) {
                        let mut inner = Vec::new();
                        self.message(sub, self.pos + len, &mut inner)?;
                        put_varint(out, key);
                        put_varint(out, inner.len() as u64);
                        out.extend_from_slice(&inner);
                    } else if is_payload(msg, field) && (len > limit || (len > KEEP_LIMIT && self.int_kept + len > INT_KEEP_TOTAL)) {
                        self.skip(len)?;
                    } else {
                        if is_payload(msg, field) && len > KEEP_LIMIT {
                            self.int_kept += len;
                        }
                        put_varint(out, key);
                        put_varint(out, len);
                        self.copy(len, out)?;
                    }
                }
                w => return Err(corrupt(format!("not protobuf as ONNX writes it: wire type {w} at byte {at}"))),
            }
        }
        Ok(())
    }
}

/// The bytes of the model at `path` without its large weight payloads.
pub fn read_slim(path: &Path) -> Result<Vec<u8>, OnnxError> {
    let io = |source| OnnxError::Io { path: path.display().to_string(), source };
    let file = std::fs::File::open(path).map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    slim(BufReader::with_capacity(64 * 1024, file), len)
}

/// The bytes of the `len`-byte model read from `r` (at its start) without its large
/// weight payloads.
pub fn slim<R: BufRead + Seek>(r: R, len: u64) -> Result<Vec<u8>, OnnxError> {
    let mut w = Walker { r, pos: 0, int_kept: 0 };
    let mut out = Vec::new();
    w.message(Msg::Model, len, &mut out)?;
    Ok(out)
}
