//! GGUF v3 writer. Streaming: the header (metadata and tensor infos with their offsets) is
//! written first, then tensors one at a time, so a converter holds one tensor in memory at once.
//! Output goes to a temporary file next to the target that is renamed into place only when
//! complete: a failed conversion never leaves a half-written file at the target path.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::parse::{GGUF_DEFAULT_ALIGNMENT, GGUF_MAGIC, GGUF_VERSION, KEY_ALIGNMENT};
use super::reader::{align_up, tensor_size};
use super::types::GgmlType;
use super::value::{type_id, MetadataValue, MAX_ARRAY_DEPTH};
use crate::error::{Error, Result};

/// Collects metadata and tensor declarations; [`GgufWriter::begin`] starts the file.
#[derive(Default)]
pub struct GgufWriter {
    metadata: Vec<(String, MetadataValue)>,
    tensors: Vec<Declared>,
    names: HashSet<String>,
}

/// A declared tensor and where its data goes.
struct Declared {
    name: String,
    ty: GgmlType,
    dims: Vec<usize>,
    n_bytes: usize,
}

impl GgufWriter {
    /// An empty file description; tensor data is aligned to 32 bytes unless the metadata sets
    /// `general.alignment` (a u32 power of two).
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets a metadata value; setting a key again replaces the value and keeps its position.
    pub fn add_metadata(&mut self, key: impl Into<String>, value: MetadataValue) {
        let key = key.into();
        match self.metadata.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.metadata.push((key, value)),
        }
    }

    /// Declares the next tensor. `dims` are in ggml order (`dims[0]` = elements per row).
    pub fn add_tensor_info(
        &mut self,
        name: impl Into<String>,
        ty: GgmlType,
        dims: &[usize],
    ) -> Result<()> {
        let name = name.into();
        let n_bytes = tensor_size(ty, dims).map_err(|m| Error::tensor(&name, m))?;
        if !self.names.insert(name.clone()) {
            return Err(Error::tensor(name, "duplicate tensor name"));
        }
        self.tensors.push(Declared {
            name,
            ty,
            dims: dims.to_vec(),
            n_bytes,
        });
        Ok(())
    }

    /// Writes the header (metadata, tensor infos with aligned offsets, padding) to a temporary
    /// file next to `path` and returns the sink that takes the tensor data.
    pub fn begin(self, path: impl AsRef<Path>) -> Result<GgufTensorSink> {
        let path = path.as_ref().to_path_buf();
        let alignment = self.alignment()?;
        let header = self.encode_header(alignment)?;
        let (tmp, file) = TempFile::create(&path)?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        out.write_all(&header)
            .map_err(|e| Error::io(&tmp.path, e))?;
        Ok(GgufTensorSink {
            out: Some(out),
            tmp,
            path,
            tensors: self.tensors,
            next: 0,
            alignment,
        })
    }

    fn alignment(&self) -> Result<usize> {
        let Some((_, v)) = self.metadata.iter().find(|(k, _)| k == KEY_ALIGNMENT) else {
            return Ok(GGUF_DEFAULT_ALIGNMENT);
        };
        // llama.cpp reads this key as a u32 only.
        match v {
            MetadataValue::U32(a) if a.is_power_of_two() => Ok(*a as usize),
            _ => Err(Error::metadata(
                KEY_ALIGNMENT,
                format!("must be a u32 power of two, not {}", v.describe()),
            )),
        }
    }

    /// The file up to the start of the data section.
    fn encode_header(&self, alignment: usize) -> Result<Vec<u8>> {
        let mut b = Vec::new();
        put_u32(&mut b, GGUF_MAGIC);
        put_u32(&mut b, GGUF_VERSION);
        put_u64(&mut b, self.tensors.len() as u64);
        put_u64(&mut b, self.metadata.len() as u64);
        for (key, value) in &self.metadata {
            put_str(&mut b, key);
            put_u32(&mut b, value.type_id());
            put_value(&mut b, value, 0).map_err(|m| Error::metadata(key, m))?;
        }
        let mut offset = 0usize;
        for t in &self.tensors {
            put_str(&mut b, &t.name);
            put_u32(&mut b, t.dims.len() as u32);
            for &d in &t.dims {
                put_u64(&mut b, d as u64);
            }
            put_u32(&mut b, t.ty as u32);
            put_u64(&mut b, offset as u64);
            offset = offset
                .checked_add(t.n_bytes)
                .and_then(|end| align_up(end, alignment))
                .ok_or_else(|| Error::tensor(&t.name, "data section size overflows"))?;
        }
        let data_start = align_up(b.len(), alignment)
            .ok_or_else(|| Error::Gguf("header size overflows".into()))?;
        b.resize(data_start, 0);
        Ok(b)
    }
}

fn put_u32(b: &mut Vec<u8>, v: u32) {
    b.extend_from_slice(&v.to_le_bytes());
}

fn put_u64(b: &mut Vec<u8>, v: u64) {
    b.extend_from_slice(&v.to_le_bytes());
}

fn put_str(b: &mut Vec<u8>, s: &str) {
    put_u64(b, s.len() as u64);
    b.extend_from_slice(s.as_bytes());
}

/// The value's payload (its type id is written by the caller: arrays write it once).
fn put_value(b: &mut Vec<u8>, v: &MetadataValue, depth: usize) -> std::result::Result<(), String> {
    use MetadataValue as V;
    match v {
        V::U8(x) => b.push(*x),
        V::I8(x) => b.extend_from_slice(&x.to_le_bytes()),
        V::U16(x) => b.extend_from_slice(&x.to_le_bytes()),
        V::I16(x) => b.extend_from_slice(&x.to_le_bytes()),
        V::U32(x) => b.extend_from_slice(&x.to_le_bytes()),
        V::I32(x) => b.extend_from_slice(&x.to_le_bytes()),
        V::F32(x) => b.extend_from_slice(&x.to_le_bytes()),
        V::Bool(x) => b.push(u8::from(*x)),
        V::String(s) => put_str(b, s),
        V::Array(a) => put_array(b, a, depth + 1)?,
        V::U64(x) => b.extend_from_slice(&x.to_le_bytes()),
        V::I64(x) => b.extend_from_slice(&x.to_le_bytes()),
        V::F64(x) => b.extend_from_slice(&x.to_le_bytes()),
    }
    Ok(())
}

/// GGUF arrays carry one element type; an empty array has none to keep and is written as u8.
fn put_array(
    b: &mut Vec<u8>,
    a: &[MetadataValue],
    depth: usize,
) -> std::result::Result<(), String> {
    if depth > MAX_ARRAY_DEPTH {
        return Err(format!(
            "arrays nested deeper than {MAX_ARRAY_DEPTH} levels"
        ));
    }
    let elem_ty = a.first().map_or(type_id::U8, MetadataValue::type_id);
    if let Some((i, v)) = a.iter().enumerate().find(|(_, v)| v.type_id() != elem_ty) {
        return Err(format!(
            "array elements must share one type: element 0 is {}, element {i} is {}",
            a[0].type_name(),
            v.type_name()
        ));
    }
    put_u32(b, elem_ty);
    put_u64(b, a.len() as u64);
    a.iter().try_for_each(|v| put_value(b, v, depth))
}

/// Takes the tensor data, in declaration order, after the header has been written.
pub struct GgufTensorSink {
    /// `None` once an I/O error has made the output unusable.
    out: Option<BufWriter<File>>,
    tmp: TempFile,
    path: PathBuf,
    tensors: Vec<Declared>,
    next: usize,
    alignment: usize,
}

impl GgufTensorSink {
    /// Writes the data of the next declared tensor (exactly its size), then pads to alignment.
    pub fn write_tensor(&mut self, name: &str, data: &[u8]) -> Result<()> {
        let Some(t) = self.tensors.get(self.next) else {
            return Err(Error::tensor(
                name,
                format!(
                    "not declared: all {} declared tensors are written",
                    self.tensors.len()
                ),
            ));
        };
        if t.name != name {
            return Err(Error::tensor(
                name,
                format!(
                    "written out of order: the next declared tensor is `{}`",
                    t.name
                ),
            ));
        }
        if data.len() != t.n_bytes {
            return Err(Error::tensor(
                name,
                format!(
                    "data is {} bytes, but {} {:?} needs {}",
                    data.len(),
                    t.ty,
                    t.dims,
                    t.n_bytes
                ),
            ));
        }
        let padding = align_up(t.n_bytes, self.alignment).map_or(0, |end| end - t.n_bytes);
        self.write_all(data)?;
        self.write_all(&vec![0u8; padding])?;
        self.next += 1;
        Ok(())
    }

    fn write_all(&mut self, bytes: &[u8]) -> Result<()> {
        let out = self
            .out
            .as_mut()
            .ok_or_else(|| Error::Gguf("an earlier write to this file failed".into()))?;
        if let Err(e) = out.write_all(bytes) {
            self.out = None;
            return Err(Error::io(&self.tmp.path, e));
        }
        Ok(())
    }

    /// Checks that every declared tensor was written, flushes and syncs the file, and moves it
    /// to the target path.
    pub fn finish(mut self) -> Result<()> {
        if let Some(t) = self.tensors.get(self.next) {
            return Err(Error::tensor(&t.name, "declared but never written"));
        }
        let out = self
            .out
            .take()
            .ok_or_else(|| Error::Gguf("an earlier write to this file failed".into()))?;
        let file = out
            .into_inner()
            .map_err(|e| Error::io(&self.tmp.path, e.into_error()))?;
        file.sync_all().map_err(|e| Error::io(&self.tmp.path, e))?;
        drop(file);
        self.tmp.persist(&self.path)
    }
}

/// A temporary file beside the target; removed on drop unless persisted.
struct TempFile {
    path: PathBuf,
    keep: bool,
}

impl TempFile {
    fn create(target: &Path) -> Result<(TempFile, File)> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let not_a_file = || {
            let e = std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file path");
            Error::io(target, e)
        };
        let name = target.file_name().ok_or_else(not_a_file)?;
        let unique = COUNTER.fetch_add(1, Ordering::Relaxed);
        let tmp_name = format!(
            ".{}.{}-{unique}.tmp",
            name.to_string_lossy(),
            std::process::id()
        );
        let path = target.with_file_name(tmp_name);
        let file = File::create(&path).map_err(|e| Error::io(&path, e))?;
        Ok((TempFile { path, keep: false }, file))
    }

    fn persist(mut self, target: &Path) -> Result<()> {
        fs::rename(&self.path, target).map_err(|e| Error::io(target, e))?;
        self.keep = true;
        // Make the rename itself durable; not every platform can open a directory, so best effort.
        if let Some(dir) = target.parent().and_then(|d| File::open(d).ok()) {
            let _ = dir.sync_all();
        }
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.keep {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// Writes a whole file from in-memory tensors (for tests and small files).
pub fn write_gguf(
    path: &Path,
    metadata: &[(String, MetadataValue)],
    tensors: &[(&str, GgmlType, &[usize], &[u8])],
) -> Result<()> {
    let mut w = GgufWriter::new();
    for (k, v) in metadata {
        w.add_metadata(k.clone(), v.clone());
    }
    for &(name, ty, dims, _) in tensors {
        w.add_tensor_info(name, ty, dims)?;
    }
    let mut sink = w.begin(path)?;
    for &(name, _, _, data) in tensors {
        sink.write_tensor(name, data)?;
    }
    sink.finish()
}
