//! GGUF reader: maps a file, validates its header (see `parse.rs`), then hands out tensors as
//! borrowed views into the map and typed access to the metadata. Every tensor range was checked
//! against the file length at open, so later accesses cannot go out of range.

use std::fmt;
use std::fs::File;
use std::io::Read;
use std::ops::Deref;
use std::path::Path;

use memmap2::Mmap;

use super::parse::{parse, Entry, Layout, LazyArray, HEADER_SIZE};
use super::types::GgmlType;
use super::value::MetadataValue;
use crate::error::{Error, Result};

/// ggml tensors have at most this many dimensions.
pub const MAX_DIMS: usize = 4;

/// Where a tensor lives and what it holds, as declared in the file header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    pub ty: GgmlType,
    /// ggml order: `dims[0]` is the number of elements per row (the innermost dimension).
    pub dims: Vec<usize>,
    /// Byte offset relative to the start of the data section.
    pub offset: u64,
}

impl TensorInfo {
    pub fn n_elements(&self) -> usize {
        product(&self.dims)
    }

    /// Size of the tensor data in bytes (saturating for shapes that never passed validation).
    pub fn n_bytes(&self) -> usize {
        tensor_size(self.ty, &self.dims).unwrap_or(usize::MAX)
    }
}

/// A tensor borrowed from the mapped file: no copy is made.
#[derive(Clone, Copy)]
pub struct TensorView<'a> {
    pub name: &'a str,
    pub ty: GgmlType,
    /// ggml order, as in [`TensorInfo::dims`].
    pub dims: &'a [usize],
    pub data: &'a [u8],
}

impl TensorView<'_> {
    pub fn n_elements(&self) -> usize {
        product(self.dims)
    }

    /// Elements per row (`dims[0]`).
    pub fn row_len(&self) -> usize {
        self.dims.first().copied().unwrap_or(1)
    }

    /// Number of rows: the product of `dims[1..]`.
    pub fn n_rows(&self) -> usize {
        product(self.dims.get(1..).unwrap_or(&[]))
    }

    /// Bytes per row (0 if the row length is not a whole number of blocks, which the reader
    /// never lets through).
    pub fn row_bytes(&self) -> usize {
        self.ty.row_bytes(self.row_len()).unwrap_or(0)
    }
}

// Tensor data can be hundreds of megabytes: show its length, not its bytes.
impl fmt::Debug for TensorView<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TensorView")
            .field("name", &self.name)
            .field("ty", &self.ty)
            .field("dims", &self.dims)
            .field("data_len", &self.data.len())
            .finish()
    }
}

fn product(dims: &[usize]) -> usize {
    dims.iter().fold(1usize, |acc, &d| acc.saturating_mul(d))
}

/// Validates a shape for a type (dimension count, whole blocks per row, element count without
/// overflow) and returns its size in bytes. The error text has no tensor name; callers add it.
pub(crate) fn tensor_size(ty: GgmlType, dims: &[usize]) -> std::result::Result<usize, String> {
    if dims.is_empty() || dims.len() > MAX_DIMS {
        return Err(format!(
            "{} dimensions: the dimension count must be 1..={MAX_DIMS}",
            dims.len()
        ));
    }
    let overflow = || format!("element count of shape {dims:?} overflows");
    dims.iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(overflow)?;
    let row_bytes = ty.row_bytes(dims[0]).ok_or_else(|| {
        format!(
            "row length {} is not a multiple of the {ty} block size {}",
            dims[0],
            ty.block_size()
        )
    })?;
    row_bytes
        .checked_mul(product(&dims[1..]))
        .ok_or_else(overflow)
}

/// `x` rounded up to a multiple of `align` (a power of two), or `None` on overflow.
pub(crate) fn align_up(x: usize, align: usize) -> Option<usize> {
    Some(x.checked_add(align - 1)? & !(align - 1))
}

/// The bytes behind a [`GgufFile`]: normally a read-only map of the file.
enum Backing {
    Map(Mmap),
    Owned(Vec<u8>),
}

impl Deref for Backing {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Backing::Map(m) => m,
            Backing::Owned(v) => v,
        }
    }
}

/// An open, validated GGUF file. Cheap to share across threads; tensors borrow from it.
pub struct GgufFile {
    bytes: Backing,
    layout: Layout,
}

// The metadata holds whole vocabularies: show the shape of the file, not its contents.
impl fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GgufFile")
            .field("version", &self.version())
            .field("file_size", &self.file_size())
            .field("alignment", &self.alignment())
            .field("data_offset", &self.data_offset())
            .field("metadata_keys", &self.layout.metadata.len())
            .field("tensors", &self.layout.tensors.len())
            .finish()
    }
}

impl GgufFile {
    /// Maps and validates a GGUF file. Fails (never panics) on any malformed content.
    pub fn open(path: impl AsRef<Path>) -> Result<GgufFile> {
        let path = path.as_ref();
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        // Mapping an empty file fails on some systems; a short file gets the parser's message.
        let bytes = if len < HEADER_SIZE as u64 {
            let mut v = Vec::new();
            (&file)
                .read_to_end(&mut v)
                .map_err(|e| Error::io(path, e))?;
            Backing::Owned(v)
        } else {
            // SAFETY: the map is read-only. As with every mmap reader, another process truncating
            // or rewriting the file while it is mapped is outside what we can guard against.
            Backing::Map(unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?)
        };
        Self::from_backing(bytes).map_err(|e| with_path(e, path))
    }

    /// Parses a GGUF image held in memory (for tests and fuzzing). Unlike a map, a `Vec` gives
    /// no alignment guarantee for the tensor data's address.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<GgufFile> {
        Self::from_backing(Backing::Owned(bytes))
    }

    fn from_backing(bytes: Backing) -> Result<GgufFile> {
        let layout = parse(&bytes)?;
        Ok(GgufFile { bytes, layout })
    }

    pub fn version(&self) -> u32 {
        self.layout.version
    }

    pub fn alignment(&self) -> usize {
        self.layout.alignment
    }

    /// Absolute file offset of the tensor data section.
    pub fn data_offset(&self) -> usize {
        self.layout.data_offset
    }

    pub fn file_size(&self) -> usize {
        self.bytes.len()
    }

    /// The whole file as mapped.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// All metadata in file order. (Large arrays are decoded on the first call, so a model
    /// that never asks for them never pays for them.)
    pub fn metadata(&self) -> &[(String, MetadataValue)] {
        self.layout.all_metadata.get_or_init(|| {
            self.layout
                .metadata
                .iter()
                .map(|(k, e)| (k.clone(), self.value(e).clone()))
                .collect()
        })
    }

    /// Whether the file has metadata `key` (without decoding its value).
    pub fn contains_key(&self, key: &str) -> bool {
        self.layout.key_index.contains_key(key)
    }

    pub fn get(&self, key: &str) -> Option<&MetadataValue> {
        self.entry(key).map(|e| self.value(e))
    }

    fn entry(&self, key: &str) -> Option<&Entry> {
        let i = *self.layout.key_index.get(key)?;
        Some(&self.layout.metadata[i].1)
    }

    /// An entry's value, decoding a large array on first use.
    fn value<'a>(&'a self, e: &'a Entry) -> &'a MetadataValue {
        match e {
            Entry::Value(v) => v,
            Entry::Lazy(l) => l.value.get_or_init(|| {
                // Cannot fail: every element was checked at open against these same bytes
                // (the map is read-only; another process rewriting the file is out of reach).
                l.decode(&self.bytes)
                    .unwrap_or_else(|_| MetadataValue::Array(Vec::new()))
            }),
        }
    }

    /// The large array behind `key`, if it is one.
    fn lazy(&self, key: &str) -> Option<&LazyArray> {
        match self.entry(key)? {
            Entry::Lazy(l) => Some(l),
            Entry::Value(_) => None,
        }
    }

    pub fn tensor_infos(&self) -> &[TensorInfo] {
        &self.layout.tensors
    }

    pub fn tensor_info(&self, name: &str) -> Option<&TensorInfo> {
        let i = *self.layout.tensor_index.get(name)?;
        Some(&self.layout.tensors[i])
    }

    /// The named tensor's data, borrowed from the map.
    pub fn tensor(&self, name: &str) -> Option<TensorView<'_>> {
        self.layout.tensor_index.get(name).map(|&i| self.view(i))
    }

    /// All tensors in file order.
    pub fn tensors(&self) -> impl Iterator<Item = TensorView<'_>> {
        (0..self.layout.tensors.len()).map(|i| self.view(i))
    }

    fn view(&self, i: usize) -> TensorView<'_> {
        let info = &self.layout.tensors[i];
        TensorView {
            name: &info.name,
            ty: info.ty,
            dims: &info.dims,
            // In range: checked against the file length at open.
            data: &self.bytes[self.layout.ranges[i].clone()],
        }
    }

    // ---- typed metadata access: missing or mistyped keys name the key in the error ----

    fn typed<'a, T>(
        &'a self,
        key: &str,
        want: &str,
        f: impl FnOnce(&'a MetadataValue) -> Option<T>,
    ) -> Result<Option<T>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => f(v).map(Some).ok_or_else(|| {
                Error::metadata(key, format!("expected {want}, found {}", v.describe()))
            }),
        }
    }

    fn required<T>(key: &str, v: Result<Option<T>>) -> Result<T> {
        v?.ok_or_else(|| Error::metadata(key, "missing"))
    }

    pub fn get_opt_u64(&self, key: &str) -> Result<Option<u64>> {
        self.typed(key, "a non-negative integer", MetadataValue::as_u64)
    }

    pub fn get_opt_u32(&self, key: &str) -> Result<Option<u32>> {
        self.typed(key, "an integer in u32 range", |v| {
            v.as_u64().and_then(|x| u32::try_from(x).ok())
        })
    }

    pub fn get_opt_f32(&self, key: &str) -> Result<Option<f32>> {
        self.typed(key, "a number", |v| v.as_f64().map(|x| x as f32))
    }

    pub fn get_opt_str(&self, key: &str) -> Result<Option<&str>> {
        self.typed(key, "a string", MetadataValue::as_str)
    }

    pub fn get_opt_bool(&self, key: &str) -> Result<Option<bool>> {
        self.typed(key, "a bool", MetadataValue::as_bool)
    }

    pub fn get_u64(&self, key: &str) -> Result<u64> {
        Self::required(key, self.get_opt_u64(key))
    }

    pub fn get_u32(&self, key: &str) -> Result<u32> {
        Self::required(key, self.get_opt_u32(key))
    }

    pub fn get_f32(&self, key: &str) -> Result<f32> {
        Self::required(key, self.get_opt_f32(key))
    }

    pub fn get_str(&self, key: &str) -> Result<&str> {
        Self::required(key, self.get_opt_str(key))
    }

    pub fn get_bool(&self, key: &str) -> Result<bool> {
        Self::required(key, self.get_opt_bool(key))
    }

    /// An array of strings (e.g. `tokenizer.ggml.tokens`), borrowed from the file.
    pub fn get_str_array(&self, key: &str) -> Result<Vec<&str>> {
        // A large array of strings: slices of the map, without decoding it into values.
        if let Some(Ok(v)) = self.lazy(key).and_then(|l| l.strs(&self.bytes)) {
            return Ok(v);
        }
        self.array_of(key, "string", MetadataValue::as_str)
    }

    /// An array of integers that fit in `i32` (e.g. `tokenizer.ggml.token_type`).
    pub fn get_i32_array(&self, key: &str) -> Result<Vec<i32>> {
        // A large array of integers, read straight from the map when every element fits (any
        // other case takes the general path, for its error message).
        let direct = self
            .lazy(key)
            .and_then(|l| l.ints(&self.bytes))
            .and_then(|v| {
                v.into_iter()
                    .map(|x| x.and_then(|x| i32::try_from(x).ok()))
                    .collect::<Option<Vec<i32>>>()
            });
        if let Some(v) = direct {
            return Ok(v);
        }
        self.array_of(key, "i32", |v| {
            v.as_i64().and_then(|x| i32::try_from(x).ok())
        })
    }

    fn array_of<'a, T>(
        &'a self,
        key: &str,
        want: &str,
        f: impl Fn(&'a MetadataValue) -> Option<T>,
    ) -> Result<Vec<T>> {
        let arr = Self::required(key, self.typed(key, "an array", MetadataValue::as_array))?;
        arr.iter()
            .enumerate()
            .map(|(i, v)| {
                f(v).ok_or_else(|| {
                    let msg = format!("element {i}: expected {want}, found {}", v.describe());
                    Error::metadata(key, msg)
                })
            })
            .collect()
    }
}

/// Prefixes container errors with the file path, so the user knows which file is broken.
fn with_path(e: Error, path: &Path) -> Error {
    match e {
        Error::Gguf(msg) => Error::Gguf(format!("{}: {msg}", path.display())),
        other => other,
    }
}
