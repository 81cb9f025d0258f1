//! Parsing and validation of the GGUF header: key/value metadata, tensor infos, data layout.
//! Every count, length and offset is checked against the bytes that are really there before
//! it is used, so a corrupt or hostile file gives an error, never a panic or a huge allocation.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::OnceLock;

use super::reader::{align_up, tensor_size, TensorInfo, MAX_DIMS};
use super::types::GgmlType;
use super::value::{type_id, MetadataValue, MAX_ARRAY_DEPTH};
use crate::error::{Error, Result};

/// `GGUF` read as a little-endian u32.
pub const GGUF_MAGIC: u32 = 0x4655_4747;
/// The version this crate writes; version 2 has the same layout and is read too.
pub const GGUF_VERSION: u32 = 3;
/// Tensor data alignment when `general.alignment` is absent.
pub const GGUF_DEFAULT_ALIGNMENT: usize = 32;
/// The metadata key that overrides the data alignment.
pub const KEY_ALIGNMENT: &str = "general.alignment";

/// Top-level arrays of scalars or strings with at least this many elements (vocabularies,
/// merges, token types) are validated at open but decoded only when asked for.
pub(crate) const LAZY_ARRAY_MIN: usize = 256;

/// A metadata value as parsed: decoded, or a large array kept as its validated encoding.
pub(crate) enum Entry {
    Value(MetadataValue),
    Lazy(LazyArray),
}

/// A top-level array whose every element was checked at open exactly as decoding checks it
/// (bounds, UTF-8, bool bytes), so decoding it later cannot fail on the same bytes.
pub(crate) struct LazyArray {
    pub elem_ty: u32,
    pub count: usize,
    /// Absolute byte range of the elements' encoding (after the element type and count).
    pub bytes: Range<usize>,
    /// The decoded array, made on first use.
    pub value: OnceLock<MetadataValue>,
}

impl LazyArray {
    /// The array decoded from `buf` (the bytes it was validated against).
    pub fn decode(&self, buf: &[u8]) -> Result<MetadataValue> {
        let mut c = Cursor {
            buf: &buf[..self.bytes.end],
            pos: self.bytes.start,
        };
        let mut out = Vec::with_capacity(prealloc(self.count));
        for _ in 0..self.count {
            out.push(read_value(&mut c, self.elem_ty, 1)?);
        }
        Ok(MetadataValue::Array(out))
    }

    /// The elements as string slices of `buf`, when this is an array of strings.
    pub fn strs<'a>(&self, buf: &'a [u8]) -> Option<Result<Vec<&'a str>>> {
        if self.elem_ty != type_id::STRING {
            return None;
        }
        let mut c = Cursor {
            buf: &buf[..self.bytes.end],
            pos: self.bytes.start,
        };
        let mut out = Vec::with_capacity(self.count);
        Some(strings(&mut c, self.count, |s| out.push(s)).map(|()| out))
    }

    /// The elements as i64, when this is an array of integers (u64 beyond i64: `None`).
    pub fn ints(&self, buf: &[u8]) -> Option<Vec<Option<i64>>> {
        let size = match self.elem_ty {
            type_id::U8 | type_id::I8 => 1,
            type_id::U16 | type_id::I16 => 2,
            type_id::U32 | type_id::I32 => 4,
            type_id::U64 | type_id::I64 => 8,
            _ => return None,
        };
        let bytes = buf.get(self.bytes.clone())?;
        let ty = self.elem_ty;
        Some(
            bytes
                .chunks_exact(size)
                .map(|b| {
                    let mut w = [0u8; 8];
                    w[..size].copy_from_slice(b);
                    let u = u64::from_le_bytes(w);
                    match ty {
                        type_id::I8 => Some(u as u8 as i8 as i64),
                        type_id::I16 => Some(u as u16 as i16 as i64),
                        type_id::I32 => Some(u as u32 as i32 as i64),
                        type_id::I64 => Some(u as i64),
                        _ => i64::try_from(u).ok(),
                    }
                })
                .collect(),
        )
    }
}

/// Everything parsed from the header.
pub(crate) struct Layout {
    pub version: u32,
    pub alignment: usize,
    pub data_offset: usize,
    pub metadata: Vec<(String, Entry)>,
    pub key_index: HashMap<String, usize>,
    /// Every entry decoded, in file order: made on the first call of `GgufFile::metadata`.
    pub all_metadata: OnceLock<Vec<(String, MetadataValue)>>,
    pub tensors: Vec<TensorInfo>,
    /// Absolute byte range of each tensor's data, parallel to `tensors`.
    pub ranges: Vec<Range<usize>>,
    pub tensor_index: HashMap<String, usize>,
}

/// magic + version + tensor_count + kv_count.
pub(crate) const HEADER_SIZE: usize = 4 + 4 + 8 + 8;
/// Smallest possible encodings, used to reject absurd counts before allocating for them.
const MIN_KV_SIZE: usize = 8 + 4 + 1; // key length, value type, a one-byte value
const MIN_TENSOR_INFO_SIZE: usize = 8 + 4 + 8 + 4 + 8; // name length, n_dims, one dim, type, offset

/// Capacity to reserve for `n` parsed items. Counts are checked against the bytes left, but
/// a parsed item can be many times larger than its encoding (a one-byte u8 becomes a 32-byte
/// value), so a hostile count in a large file must not reserve memory up front: beyond this,
/// vectors grow only as items are really read.
fn prealloc(n: usize) -> usize {
    n.min(1 << 16)
}

/// A bounds-checked little-endian reader over the file bytes.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        match self.pos.checked_add(n) {
            Some(end) if end <= self.buf.len() => {
                let s = &self.buf[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            _ => Err(gguf_err(format!(
                "truncated file: unexpected end of file reading {what} ({n} bytes at offset {}, file size {})",
                self.pos,
                self.buf.len()
            ))),
        }
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let s = self.take(N, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u8(&mut self, what: &str) -> Result<u8> {
        Ok(self.array::<1>(what)?[0])
    }
    fn u16(&mut self, what: &str) -> Result<u16> {
        self.array(what).map(u16::from_le_bytes)
    }
    fn u32(&mut self, what: &str) -> Result<u32> {
        self.array(what).map(u32::from_le_bytes)
    }
    fn u64(&mut self, what: &str) -> Result<u64> {
        self.array(what).map(u64::from_le_bytes)
    }

    /// A count of items of at least `min_size` bytes each, checked against the bytes left so
    /// that a corrupt count cannot trigger a huge allocation.
    fn count(&mut self, what: &str, min_size: usize) -> Result<usize> {
        let at = self.pos;
        let n = self.u64(what)?;
        let remaining = self.remaining();
        usize::try_from(n)
            .ok()
            .filter(|&n| n.checked_mul(min_size).is_some_and(|b| b <= remaining))
            .ok_or_else(|| {
                gguf_err(format!(
                    "truncated file or absurd {what} {n} at offset {at}: past end of file, only {remaining} bytes remain"
                ))
            })
    }

    fn string(&mut self, what: &str) -> Result<String> {
        self.str(what).map(str::to_owned)
    }

    /// A string's length, read and checked against the bytes left (the cursor stays before
    /// the string's bytes).
    fn str_len(&mut self, what: &str) -> Result<usize> {
        let at = self.pos;
        let len = self.u64(what)?;
        usize::try_from(len)
            .ok()
            .filter(|&n| n <= self.remaining())
            .ok_or_else(|| {
                gguf_err(format!(
                    "truncated file: {what} length {len} at offset {at} runs past end of file (size {})",
                    self.buf.len()
                ))
            })
    }

    /// A string borrowed from the buffer.
    fn str(&mut self, what: &str) -> Result<&'a str> {
        let at = self.pos;
        let n = self.str_len(what)?;
        let bytes = self.take(n, what)?;
        match std::str::from_utf8(bytes) {
            Ok(s) => Ok(s),
            Err(e) => Err(gguf_err(format!(
                "{what} at offset {at} is not valid UTF-8 ({e})"
            ))),
        }
    }
}

pub(crate) fn parse(buf: &[u8]) -> Result<Layout> {
    let mut c = Cursor { buf, pos: 0 };
    let magic = c.u32("magic")?;
    if magic != GGUF_MAGIC {
        return Err(gguf_err(format!(
            "bad magic \"{}\" (expected \"GGUF\"): not a GGUF file",
            magic.to_le_bytes().escape_ascii()
        )));
    }
    let version = c.u32("version")?;
    check_version(version)?;
    let tensor_count = c.count("tensor_count", MIN_TENSOR_INFO_SIZE)?;
    let kv_count = c.count("kv_count", MIN_KV_SIZE)?;

    let (metadata, key_index) = parse_metadata(&mut c, kv_count)?;
    let alignment = alignment_of(key_index.get(KEY_ALIGNMENT).map(|&i| &metadata[i].1))?;
    let (tensors, tensor_index) = parse_tensor_infos(&mut c, tensor_count)?;
    let data_offset =
        align_up(c.pos, alignment).ok_or_else(|| gguf_err("data offset overflows".to_string()))?;
    let ranges = tensor_ranges(&tensors, alignment, data_offset, buf.len())?;
    check_overlaps(&tensors, &ranges)?;
    Ok(Layout {
        version,
        alignment,
        data_offset,
        metadata,
        key_index,
        all_metadata: OnceLock::new(),
        tensors,
        ranges,
        tensor_index,
    })
}

fn check_version(version: u32) -> Result<()> {
    match version {
        2 | 3 => Ok(()),
        1 => Err(gguf_err(
            "unsupported GGUF version 1 (32-bit counts); only versions 2 and 3 are supported",
        )),
        v if (1..=3).contains(&v.swap_bytes()) => Err(gguf_err(format!(
            "unsupported GGUF version {v} (a big-endian file?); only little-endian versions 2 and 3 are supported"
        ))),
        v => Err(gguf_err(format!(
            "unsupported GGUF version {v}; only versions 2 and 3 are supported"
        ))),
    }
}

type Metadata = (Vec<(String, Entry)>, HashMap<String, usize>);

fn parse_metadata(c: &mut Cursor<'_>, kv_count: usize) -> Result<Metadata> {
    let mut metadata = Vec::with_capacity(prealloc(kv_count));
    let mut index = HashMap::with_capacity(prealloc(kv_count));
    for i in 0..kv_count {
        let key = c
            .string("metadata key")
            .map_err(|e| in_context(e, || format!("metadata entry {i}")))?;
        let value = parse_kv_value(c).map_err(|e| in_context(e, || format!("metadata `{key}`")))?;
        if index.insert(key.clone(), metadata.len()).is_some() {
            return Err(gguf_err(format!("duplicate metadata key `{key}`")));
        }
        metadata.push((key, value));
    }
    Ok((metadata, index))
}

fn parse_kv_value(c: &mut Cursor<'_>) -> Result<Entry> {
    let ty = c.u32("value type")?;
    if ty == type_id::ARRAY {
        let start = c.pos;
        let elem_ty = c.u32("array element type")?;
        let min = min_value_size(elem_ty)?;
        let n = c.count("array count", min)?;
        if elem_ty != type_id::ARRAY && n >= LAZY_ARRAY_MIN {
            let first = c.pos;
            if elem_ty == type_id::STRING {
                strings(c, n, drop)?;
            } else {
                for _ in 0..n {
                    check_value(c, elem_ty)?;
                }
            }
            return Ok(Entry::Lazy(LazyArray {
                elem_ty,
                count: n,
                bytes: first..c.pos,
                value: OnceLock::new(),
            }));
        }
        c.pos = start;
    }
    read_value(c, ty, 0).map(Entry::Value)
}

/// Reads `n` strings, checking their lengths and that each is UTF-8 exactly as [`read_value`]
/// does, and hands each to `f`. The UTF-8 check is made once per run of strings shorter than
/// 128 bytes: each length field of such a run is 8 ASCII bytes, which no multi-byte character
/// can span, so the run's bytes are valid UTF-8 exactly when every string in it is, and each
/// string is then sliced from the checked run at character boundaries (`str::get`). Longer
/// strings, and a run that fails (to name the bad string), are checked one by one.
fn strings<'a>(c: &mut Cursor<'a>, n: usize, mut f: impl FnMut(&'a str)) -> Result<()> {
    let mut i = 0;
    while i < n {
        // The run of short strings from element i: elements i..j, bytes run_start..end.
        let (run_start, mut end, mut j) = (c.pos, c.pos, i);
        while j < n {
            let mut look = Cursor {
                buf: c.buf,
                pos: end,
            };
            let len = look.str_len("string value")?;
            if len >= 0x80 {
                break;
            }
            end = look.pos + len;
            j += 1;
        }
        match std::str::from_utf8(&c.buf[run_start..end]) {
            Ok(run) => {
                while c.pos < end {
                    let len = c.str_len("string value")?;
                    let a = c.pos - run_start;
                    c.pos += len;
                    // Character boundaries on both sides (see above): never `None`.
                    let s = run.get(a..a + len).ok_or_else(|| {
                        gguf_err(format!(
                            "string value at offset {} is not valid UTF-8",
                            a + run_start - 8
                        ))
                    })?;
                    f(s);
                }
            }
            Err(_) => {
                while c.pos < end {
                    f(c.str("string value")?);
                }
            }
        }
        if j < n {
            f(c.str("string value")?);
            j += 1;
        }
        i = j;
    }
    Ok(())
}

/// Steps over one value of scalar or string type `ty`, checking what [`read_value`] checks,
/// without building it.
fn check_value(c: &mut Cursor<'_>, ty: u32) -> Result<()> {
    match ty {
        type_id::STRING => c.str("string value").map(drop),
        type_id::BOOL => read_bool(c).map(drop),
        _ => {
            let size = min_value_size(ty)?;
            c.take(size, "array element").map(drop)
        }
    }
}

/// Encoded size of the smallest value of a type, or an error for an unknown type id.
fn min_value_size(ty: u32) -> Result<usize> {
    Ok(match ty {
        type_id::U8 | type_id::I8 | type_id::BOOL => 1,
        type_id::U16 | type_id::I16 => 2,
        type_id::U32 | type_id::I32 | type_id::F32 => 4,
        type_id::U64 | type_id::I64 | type_id::F64 | type_id::STRING => 8,
        type_id::ARRAY => 4 + 8,
        other => return Err(gguf_err(format!("unknown metadata value type {other}"))),
    })
}

/// Reads one value of type `ty`; `depth` counts the arrays this value sits inside.
fn read_value(c: &mut Cursor<'_>, ty: u32, depth: usize) -> Result<MetadataValue> {
    use MetadataValue as V;
    Ok(match ty {
        type_id::U8 => V::U8(c.u8("u8 value")?),
        type_id::I8 => V::I8(c.u8("i8 value")? as i8),
        type_id::U16 => V::U16(c.u16("u16 value")?),
        type_id::I16 => V::I16(c.u16("i16 value")? as i16),
        type_id::U32 => V::U32(c.u32("u32 value")?),
        type_id::I32 => V::I32(c.u32("i32 value")? as i32),
        type_id::F32 => V::F32(f32::from_bits(c.u32("f32 value")?)),
        type_id::U64 => V::U64(c.u64("u64 value")?),
        type_id::I64 => V::I64(c.u64("i64 value")? as i64),
        type_id::F64 => V::F64(f64::from_bits(c.u64("f64 value")?)),
        type_id::BOOL => V::Bool(read_bool(c)?),
        type_id::STRING => V::String(c.string("string value")?),
        type_id::ARRAY => V::Array(read_array(c, depth + 1)?),
        other => return Err(gguf_err(format!("unknown metadata value type {other}"))),
    })
}

fn read_bool(c: &mut Cursor<'_>) -> Result<bool> {
    let at = c.pos;
    match c.u8("bool value")? {
        0 => Ok(false),
        1 => Ok(true),
        b => Err(gguf_err(format!("invalid bool byte {b} at offset {at}"))),
    }
}

fn read_array(c: &mut Cursor<'_>, depth: usize) -> Result<Vec<MetadataValue>> {
    if depth > MAX_ARRAY_DEPTH {
        return Err(gguf_err(format!(
            "arrays nested deeper than {MAX_ARRAY_DEPTH} levels"
        )));
    }
    let elem_ty = c.u32("array element type")?;
    let min = min_value_size(elem_ty)?;
    let n = c.count("array count", min)?;
    let mut out = Vec::with_capacity(prealloc(n));
    for _ in 0..n {
        out.push(read_value(c, elem_ty, depth)?);
    }
    Ok(out)
}

fn alignment_of(value: Option<&Entry>) -> Result<usize> {
    let v = match value {
        None => return Ok(GGUF_DEFAULT_ALIGNMENT),
        Some(Entry::Value(v)) => v,
        Some(Entry::Lazy(_)) => {
            return Err(gguf_err(format!(
                "bad {KEY_ALIGNMENT}: an array; the alignment must be a nonzero power of two"
            )))
        }
    };
    match v.as_u64().and_then(|a| usize::try_from(a).ok()) {
        Some(a) if a.is_power_of_two() => Ok(a),
        _ => Err(gguf_err(format!(
            "bad {KEY_ALIGNMENT} {}: the alignment must be a nonzero power of two",
            v.describe()
        ))),
    }
}

type TensorTable = (Vec<TensorInfo>, HashMap<String, usize>);

fn parse_tensor_infos(c: &mut Cursor<'_>, count: usize) -> Result<TensorTable> {
    let mut infos = Vec::with_capacity(prealloc(count));
    let mut index = HashMap::with_capacity(prealloc(count));
    for i in 0..count {
        let info = parse_tensor_info(c, i)?;
        if index.insert(info.name.clone(), infos.len()).is_some() {
            return Err(gguf_err(format!("duplicate tensor name `{}`", info.name)));
        }
        infos.push(info);
    }
    Ok((infos, index))
}

fn parse_tensor_info(c: &mut Cursor<'_>, i: usize) -> Result<TensorInfo> {
    let name = c
        .string("tensor name")
        .map_err(|e| in_context(e, || format!("tensor info {i}")))?;
    let ctx = |e| in_context(e, || format!("tensor `{name}`"));
    let n_dims = c.u32("n_dims").map_err(ctx)?;
    if n_dims == 0 || n_dims as usize > MAX_DIMS {
        return Err(ctx(gguf_err(format!(
            "{n_dims} dimensions: the dimension count must be 1..={MAX_DIMS}"
        ))));
    }
    let mut dims = Vec::with_capacity(n_dims as usize);
    for _ in 0..n_dims {
        let d = c.u64("dimension").map_err(ctx)?;
        let d = usize::try_from(d)
            .map_err(|_| ctx(gguf_err(format!("dimension {d} overflows usize"))))?;
        dims.push(d);
    }
    let type_id = c.u32("ggml type").map_err(ctx)?;
    let ty = GgmlType::from_id(type_id)
        .ok_or_else(|| ctx(gguf_err(format!("unknown ggml type id {type_id}"))))?;
    let offset = c.u64("data offset").map_err(ctx)?;
    tensor_size(ty, &dims).map_err(|m| ctx(gguf_err(m)))?;
    Ok(TensorInfo {
        name,
        ty,
        dims,
        offset,
    })
}

/// Absolute data range of each tensor, each checked for alignment and against the file end.
fn tensor_ranges(
    tensors: &[TensorInfo],
    alignment: usize,
    data_offset: usize,
    file_size: usize,
) -> Result<Vec<Range<usize>>> {
    tensors
        .iter()
        .map(|t| {
            let err = |m: String| gguf_err(format!("tensor `{}`: {m}", t.name));
            if t.offset % alignment as u64 != 0 {
                return Err(err(format!(
                    "data offset {} is not a multiple of the alignment {alignment}",
                    t.offset
                )));
            }
            let n_bytes = t.n_bytes();
            let start = usize::try_from(t.offset)
                .ok()
                .and_then(|o| o.checked_add(data_offset));
            match start.and_then(|s| Some(s..s.checked_add(n_bytes)?)) {
                Some(r) if r.end <= file_size => Ok(r),
                _ => {
                    // Computed wide so that the message itself cannot overflow.
                    let end = data_offset as u128 + u128::from(t.offset) + n_bytes as u128;
                    Err(err(format!(
                        "truncated file: data (offset {}, {n_bytes} bytes) needs the file to reach byte {end}, past end of file (size {file_size})",
                        t.offset
                    )))
                }
            }
        })
        .collect()
}

/// Two tensors sharing bytes means a corrupt or hostile header; empty tensors share nothing.
fn check_overlaps(tensors: &[TensorInfo], ranges: &[Range<usize>]) -> Result<()> {
    let mut order: Vec<usize> = (0..ranges.len())
        .filter(|&i| !ranges[i].is_empty())
        .collect();
    order.sort_unstable_by_key(|&i| ranges[i].start);
    for w in order.windows(2) {
        let (a, b) = (w[0], w[1]);
        if ranges[b].start < ranges[a].end {
            return Err(gguf_err(format!(
                "tensors `{}` and `{}` overlap in the data section",
                tensors[a].name, tensors[b].name
            )));
        }
    }
    Ok(())
}

fn gguf_err(msg: impl Into<String>) -> Error {
    Error::Gguf(msg.into())
}

/// Prefixes a container error with where it happened (a key or a tensor).
fn in_context(e: Error, ctx: impl FnOnce() -> String) -> Error {
    match e {
        Error::Gguf(msg) => Error::Gguf(format!("{}: {msg}", ctx())),
        other => other,
    }
}
