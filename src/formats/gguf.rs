//! GGUF (v2/v3) reader and a small writer.
//!
//! The reader maps the file and parses the header, the metadata and the tensor infos into owned
//! values; tensor data stays in the map and is dequantized on request. Every count, length and
//! offset read from the file is checked against the bytes that are left *before* anything sized by
//! it is allocated, all size arithmetic is checked, and every error names the file, the byte
//! offset or key/tensor, and what was expected vs found. No input makes it panic.
//!
//! Layout (little-endian):
//! ```text
//! magic "GGUF" | version u32 | n_tensors u64 | n_kv u64
//! n_kv x (key: string, value_type u32, value)          string = len u64 + UTF-8 bytes
//! n_tensors x (name: string, n_dims u32, ne[n_dims] u64, type u32, offset u64)
//! padding to general.alignment (default 32) | tensor data (offsets relative to here)
//! ```
//! Shapes: GGUF lists `ne0` first and `ne0` is contiguous, so GGUF `[ne0, ne1]` is the row-major
//! `[ne1, ne0]` that [`GgufTensorInfo::shape`] reports (HF `nn.Linear` layout `[out, in]`).
//!
//! Dequantization follows ggml's reference `dequantize_row_*` (ggml-quants.c) exactly; the writer
//! quantizes with the reference `quantize_row_*_ref`.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use candle_core::quantized::k_quants as kq;
use candle_core::{Device, Tensor};
use half::{bf16, f16};

use crate::model::weights::WeightSource;

/// "GGUF" read as a little-endian u32.
pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";
/// Alignment of the data section and of each tensor when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// Deepest nesting of arrays accepted (arrays of arrays of ...). Real files use at most 2.
const MAX_ARRAY_DEPTH: usize = 8;
/// ggml tensors have at most 4 dimensions.
pub const MAX_DIMS: usize = 4;

// ---------------------------------------------------------------------------------------------
// Tensor types
// ---------------------------------------------------------------------------------------------

/// A ggml tensor type, by its on-disk id. Every id ggml defines is known (for names and sizes);
/// [`GgmlType::is_supported`] says which ones this module can dequantize.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GgmlType(pub u32);

impl GgmlType {
    pub const F32: GgmlType = GgmlType(0);
    pub const F16: GgmlType = GgmlType(1);
    pub const Q4_0: GgmlType = GgmlType(2);
    pub const Q4_1: GgmlType = GgmlType(3);
    pub const Q5_0: GgmlType = GgmlType(6);
    pub const Q5_1: GgmlType = GgmlType(7);
    pub const Q8_0: GgmlType = GgmlType(8);
    pub const Q8_1: GgmlType = GgmlType(9);
    pub const Q2_K: GgmlType = GgmlType(10);
    pub const Q3_K: GgmlType = GgmlType(11);
    pub const Q4_K: GgmlType = GgmlType(12);
    pub const Q5_K: GgmlType = GgmlType(13);
    pub const Q6_K: GgmlType = GgmlType(14);
    pub const Q8_K: GgmlType = GgmlType(15);
    pub const BF16: GgmlType = GgmlType(30);

    /// Types [`GgufFile::dequantize`] handles: the float types and every block type candle's
    /// quantized module can dequantize. Not supported (an error naming the type): the IQ*
    /// importance-matrix codebook types, TQ1_0/TQ2_0, MXFP4, and the integer/F64 types.
    pub const SUPPORTED: [GgmlType; 15] = [
        Self::F32,
        Self::F16,
        Self::BF16,
        Self::Q8_0,
        Self::Q4_0,
        Self::Q4_1,
        Self::Q5_0,
        Self::Q5_1,
        Self::Q8_1,
        Self::Q2_K,
        Self::Q3_K,
        Self::Q4_K,
        Self::Q5_K,
        Self::Q6_K,
        Self::Q8_K,
    ];

    /// (name, elements per block, bytes per block) for every type id ggml defines.
    fn traits(self) -> Option<(&'static str, u64, u64)> {
        Some(match self.0 {
            0 => ("F32", 1, 4),
            1 => ("F16", 1, 2),
            2 => ("Q4_0", 32, 18),
            3 => ("Q4_1", 32, 20),
            6 => ("Q5_0", 32, 22),
            7 => ("Q5_1", 32, 24),
            8 => ("Q8_0", 32, 34),
            9 => ("Q8_1", 32, 36),
            10 => ("Q2_K", 256, 84),
            11 => ("Q3_K", 256, 110),
            12 => ("Q4_K", 256, 144),
            13 => ("Q5_K", 256, 176),
            14 => ("Q6_K", 256, 210),
            15 => ("Q8_K", 256, 292),
            16 => ("IQ2_XXS", 256, 66),
            17 => ("IQ2_XS", 256, 74),
            18 => ("IQ3_XXS", 256, 98),
            19 => ("IQ1_S", 256, 50),
            20 => ("IQ4_NL", 32, 18),
            21 => ("IQ3_S", 256, 110),
            22 => ("IQ2_S", 256, 82),
            23 => ("IQ4_XS", 256, 136),
            24 => ("I8", 1, 1),
            25 => ("I16", 1, 2),
            26 => ("I32", 1, 4),
            27 => ("I64", 1, 8),
            28 => ("F64", 1, 8),
            29 => ("IQ1_M", 256, 56),
            30 => ("BF16", 1, 2),
            34 => ("TQ1_0", 256, 54),
            35 => ("TQ2_0", 256, 66),
            39 => ("MXFP4", 32, 17),
            _ => return None,
        })
    }

    /// Whether ggml defines this id at all.
    pub fn is_known(self) -> bool {
        self.traits().is_some()
    }
    /// Whether this module can dequantize it.
    pub fn is_supported(self) -> bool {
        Self::SUPPORTED.contains(&self)
    }
    /// ggml's name ("Q4_1"), or "unknown".
    pub fn name(self) -> &'static str {
        self.traits().map_or("unknown", |t| t.0)
    }
    /// Elements per block (1 for plain float types). 0 for an unknown id.
    pub fn block_size(self) -> u64 {
        self.traits().map_or(0, |t| t.1)
    }
    /// Bytes per block. 0 for an unknown id.
    pub fn type_size(self) -> u64 {
        self.traits().map_or(0, |t| t.2)
    }
    /// Bytes taken by `n` elements (None on overflow or when `n` is not a multiple of the block).
    pub fn bytes_for(self, n: u64) -> Option<u64> {
        let bs = self.block_size();
        if bs == 0 || !n.is_multiple_of(bs) {
            return None;
        }
        (n / bs).checked_mul(self.type_size())
    }
    fn supported_list() -> String {
        Self::SUPPORTED
            .iter()
            .map(|t| t.name())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (id {})", self.name(), self.0)
    }
}

// ---------------------------------------------------------------------------------------------
// Metadata values
// ---------------------------------------------------------------------------------------------

/// GGUF metadata value type ids.
mod vt {
    pub const U8: u32 = 0;
    pub const I8: u32 = 1;
    pub const U16: u32 = 2;
    pub const I16: u32 = 3;
    pub const U32: u32 = 4;
    pub const I32: u32 = 5;
    pub const F32: u32 = 6;
    pub const BOOL: u32 = 7;
    pub const STRING: u32 = 8;
    pub const ARRAY: u32 = 9;
    pub const U64: u32 = 10;
    pub const I64: u32 = 11;
    pub const F64: u32 = 12;
}

fn value_type_name(t: u32) -> &'static str {
    match t {
        vt::U8 => "u8",
        vt::I8 => "i8",
        vt::U16 => "u16",
        vt::I16 => "i16",
        vt::U32 => "u32",
        vt::I32 => "i32",
        vt::F32 => "f32",
        vt::BOOL => "bool",
        vt::STRING => "string",
        vt::ARRAY => "array",
        vt::U64 => "u64",
        vt::I64 => "i64",
        vt::F64 => "f64",
        _ => "unknown",
    }
}

/// Smallest encoded size of one value of type `t` (used to bound counts before allocating).
fn min_value_size(t: u32) -> Option<u64> {
    Some(match t {
        vt::U8 | vt::I8 | vt::BOOL => 1,
        vt::U16 | vt::I16 => 2,
        vt::U32 | vt::I32 | vt::F32 => 4,
        vt::U64 | vt::I64 | vt::F64 => 8,
        vt::STRING => 8,
        vt::ARRAY => 12,
        _ => return None,
    })
}

/// One metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum GgufValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(GgufArray),
}

/// A metadata array: homogeneous, typed; arrays may nest.
#[derive(Clone, Debug, PartialEq)]
pub enum GgufArray {
    U8(Vec<u8>),
    I8(Vec<i8>),
    U16(Vec<u16>),
    I16(Vec<i16>),
    U32(Vec<u32>),
    I32(Vec<i32>),
    U64(Vec<u64>),
    I64(Vec<i64>),
    F32(Vec<f32>),
    F64(Vec<f64>),
    Bool(Vec<bool>),
    String(Vec<String>),
    Array(Vec<GgufArray>),
}

impl GgufArray {
    pub fn len(&self) -> usize {
        match self {
            GgufArray::U8(v) => v.len(),
            GgufArray::I8(v) => v.len(),
            GgufArray::U16(v) => v.len(),
            GgufArray::I16(v) => v.len(),
            GgufArray::U32(v) => v.len(),
            GgufArray::I32(v) => v.len(),
            GgufArray::U64(v) => v.len(),
            GgufArray::I64(v) => v.len(),
            GgufArray::F32(v) => v.len(),
            GgufArray::F64(v) => v.len(),
            GgufArray::Bool(v) => v.len(),
            GgufArray::String(v) => v.len(),
            GgufArray::Array(v) => v.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn elem_type(&self) -> u32 {
        match self {
            GgufArray::U8(_) => vt::U8,
            GgufArray::I8(_) => vt::I8,
            GgufArray::U16(_) => vt::U16,
            GgufArray::I16(_) => vt::I16,
            GgufArray::U32(_) => vt::U32,
            GgufArray::I32(_) => vt::I32,
            GgufArray::U64(_) => vt::U64,
            GgufArray::I64(_) => vt::I64,
            GgufArray::F32(_) => vt::F32,
            GgufArray::F64(_) => vt::F64,
            GgufArray::Bool(_) => vt::BOOL,
            GgufArray::String(_) => vt::STRING,
            GgufArray::Array(_) => vt::ARRAY,
        }
    }
    /// The elements as i64 when this is an array of integers (any width) that all fit.
    pub fn to_i64_vec(&self) -> Option<Vec<i64>> {
        Some(match self {
            GgufArray::U8(v) => v.iter().map(|&x| x as i64).collect(),
            GgufArray::I8(v) => v.iter().map(|&x| x as i64).collect(),
            GgufArray::U16(v) => v.iter().map(|&x| x as i64).collect(),
            GgufArray::I16(v) => v.iter().map(|&x| x as i64).collect(),
            GgufArray::U32(v) => v.iter().map(|&x| x as i64).collect(),
            GgufArray::I32(v) => v.iter().map(|&x| x as i64).collect(),
            GgufArray::U64(v) => v
                .iter()
                .map(|&x| i64::try_from(x).ok())
                .collect::<Option<_>>()?,
            GgufArray::I64(v) => v.clone(),
            _ => return None,
        })
    }
    /// The elements as f32 when this is an array of floats (f32 or f64).
    pub fn to_f32_vec(&self) -> Option<Vec<f32>> {
        match self {
            GgufArray::F32(v) => Some(v.clone()),
            GgufArray::F64(v) => Some(v.iter().map(|&x| x as f32).collect()),
            _ => None,
        }
    }
    fn type_desc(&self) -> String {
        format!("array of {}", value_type_name(self.elem_type()))
    }
}

impl GgufValue {
    /// Type name as GGUF calls it ("u32", "string", "array of string", ...).
    pub fn type_name(&self) -> String {
        match self {
            GgufValue::Array(a) => a.type_desc(),
            other => value_type_name(other.type_id()).to_string(),
        }
    }
    fn type_id(&self) -> u32 {
        match self {
            GgufValue::U8(_) => vt::U8,
            GgufValue::I8(_) => vt::I8,
            GgufValue::U16(_) => vt::U16,
            GgufValue::I16(_) => vt::I16,
            GgufValue::U32(_) => vt::U32,
            GgufValue::I32(_) => vt::I32,
            GgufValue::U64(_) => vt::U64,
            GgufValue::I64(_) => vt::I64,
            GgufValue::F32(_) => vt::F32,
            GgufValue::F64(_) => vt::F64,
            GgufValue::Bool(_) => vt::BOOL,
            GgufValue::String(_) => vt::STRING,
            GgufValue::Array(_) => vt::ARRAY,
        }
    }
    /// Any integer type, as u64 (None if negative or not an integer).
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            GgufValue::U8(v) => Some(v as u64),
            GgufValue::U16(v) => Some(v as u64),
            GgufValue::U32(v) => Some(v as u64),
            GgufValue::U64(v) => Some(v),
            GgufValue::I8(v) => u64::try_from(v).ok(),
            GgufValue::I16(v) => u64::try_from(v).ok(),
            GgufValue::I32(v) => u64::try_from(v).ok(),
            GgufValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }
    /// Any integer type, as i64 (None if it does not fit or is not an integer).
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            GgufValue::U8(v) => Some(v as i64),
            GgufValue::U16(v) => Some(v as i64),
            GgufValue::U32(v) => Some(v as i64),
            GgufValue::U64(v) => i64::try_from(v).ok(),
            GgufValue::I8(v) => Some(v as i64),
            GgufValue::I16(v) => Some(v as i64),
            GgufValue::I32(v) => Some(v as i64),
            GgufValue::I64(v) => Some(v),
            _ => None,
        }
    }
    /// f32 or f64 (narrowed) values.
    pub fn as_f32(&self) -> Option<f32> {
        match *self {
            GgufValue::F32(v) => Some(v),
            GgufValue::F64(v) => Some(v as f32),
            _ => None,
        }
    }
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            GgufValue::F32(v) => Some(v as f64),
            GgufValue::F64(v) => Some(v),
            _ => None,
        }
    }
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            GgufValue::Bool(v) => Some(v),
            _ => None,
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            GgufValue::String(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_array(&self) -> Option<&GgufArray> {
        match self {
            GgufValue::Array(a) => Some(a),
            _ => None,
        }
    }
}

macro_rules! value_from {
    ($($t:ty => $v:ident),* $(,)?) => {$(
        impl From<$t> for GgufValue {
            fn from(x: $t) -> Self { GgufValue::$v(x) }
        }
        impl From<Vec<$t>> for GgufValue {
            fn from(x: Vec<$t>) -> Self { GgufValue::Array(GgufArray::$v(x)) }
        }
    )*};
}
value_from!(u8 => U8, i8 => I8, u16 => U16, i16 => I16, u32 => U32, i32 => I32, u64 => U64,
    i64 => I64, f32 => F32, f64 => F64, bool => Bool, String => String);

impl From<&str> for GgufValue {
    fn from(x: &str) -> Self {
        GgufValue::String(x.to_string())
    }
}
impl From<Vec<&str>> for GgufValue {
    fn from(x: Vec<&str>) -> Self {
        GgufValue::Array(GgufArray::String(x.into_iter().map(String::from).collect()))
    }
}
impl From<&[&str]> for GgufValue {
    fn from(x: &[&str]) -> Self {
        GgufValue::Array(GgufArray::String(x.iter().map(|s| s.to_string()).collect()))
    }
}
impl From<GgufArray> for GgufValue {
    fn from(x: GgufArray) -> Self {
        GgufValue::Array(x)
    }
}

// ---------------------------------------------------------------------------------------------
// Bounds-checked cursor
// ---------------------------------------------------------------------------------------------

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    path: &'a str,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }
    fn bytes(&mut self, n: u64, what: &dyn fmt::Display) -> Result<&'a [u8]> {
        let left = self.remaining();
        if n > left as u64 {
            bail!(
                "{}: truncated at byte {} reading {}: need {} bytes, only {} left (file is {} bytes)",
                self.path,
                self.pos,
                what,
                n,
                left,
                self.buf.len()
            );
        }
        let n = n as usize;
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn arr<const N: usize>(&mut self, what: &dyn fmt::Display) -> Result<[u8; N]> {
        let b = self.bytes(N as u64, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(b);
        Ok(a)
    }
    fn u8(&mut self, what: &dyn fmt::Display) -> Result<u8> {
        Ok(self.arr::<1>(what)?[0])
    }
    fn u32(&mut self, what: &dyn fmt::Display) -> Result<u32> {
        Ok(u32::from_le_bytes(self.arr(what)?))
    }
    fn u64(&mut self, what: &dyn fmt::Display) -> Result<u64> {
        Ok(u64::from_le_bytes(self.arr(what)?))
    }
    /// A GGUF string: u64 length, then bytes. Invalid UTF-8 is an error when `strict`,
    /// else replaced (values such as vocabulary entries).
    fn string(&mut self, what: &dyn fmt::Display, strict: bool) -> Result<String> {
        let at = self.pos;
        let len = self.u64(&format_args!("the length of {what}"))?;
        if len > self.remaining() as u64 {
            bail!(
                "{}: at byte {}: {} claims a length of {} bytes, but only {} bytes are left in the file",
                self.path,
                at,
                what,
                len,
                self.remaining()
            );
        }
        let b = self.bytes(len, what)?;
        match std::str::from_utf8(b) {
            Ok(s) => Ok(s.to_string()),
            Err(e) if strict => bail!(
                "{}: at byte {}: {} is not valid UTF-8 ({e})",
                self.path,
                at,
                what
            ),
            Err(_) => Ok(String::from_utf8_lossy(b).into_owned()),
        }
    }
    /// Check that `count` items of at least `min_size` bytes each can still fit.
    fn check_count(
        &self,
        count: u64,
        min_size: u64,
        at: usize,
        what: &dyn fmt::Display,
    ) -> Result<usize> {
        let need = count.checked_mul(min_size);
        match need {
            Some(need) if need <= self.remaining() as u64 => Ok(count as usize),
            _ => bail!(
                "{}: at byte {}: {} claims {} elements (at least {} bytes each), but only {} bytes are left in the file",
                self.path,
                at,
                what,
                count,
                min_size,
                self.remaining()
            ),
        }
    }

    fn value(&mut self, t: u32, what: &dyn fmt::Display, depth: usize) -> Result<GgufValue> {
        let at = self.pos;
        Ok(match t {
            vt::U8 => GgufValue::U8(self.u8(what)?),
            vt::I8 => GgufValue::I8(self.u8(what)? as i8),
            vt::U16 => GgufValue::U16(u16::from_le_bytes(self.arr(what)?)),
            vt::I16 => GgufValue::I16(i16::from_le_bytes(self.arr(what)?)),
            vt::U32 => GgufValue::U32(self.u32(what)?),
            vt::I32 => GgufValue::I32(i32::from_le_bytes(self.arr(what)?)),
            vt::F32 => GgufValue::F32(f32::from_le_bytes(self.arr(what)?)),
            vt::U64 => GgufValue::U64(self.u64(what)?),
            vt::I64 => GgufValue::I64(i64::from_le_bytes(self.arr(what)?)),
            vt::F64 => GgufValue::F64(f64::from_le_bytes(self.arr(what)?)),
            vt::BOOL => GgufValue::Bool(self.bool(what)?),
            vt::STRING => GgufValue::String(self.string(what, false)?),
            vt::ARRAY => GgufValue::Array(self.array(what, depth)?),
            other => bail!(
                "{}: at byte {}: {} has unknown value type {} (expected 0..=12)",
                self.path,
                at.saturating_sub(4),
                what,
                other
            ),
        })
    }

    fn bool(&mut self, what: &dyn fmt::Display) -> Result<bool> {
        let at = self.pos;
        match self.u8(what)? {
            0 => Ok(false),
            1 => Ok(true),
            b => bail!(
                "{}: at byte {}: {} is a bool with byte value {} (expected 0 or 1)",
                self.path,
                at,
                what,
                b
            ),
        }
    }

    fn array(&mut self, what: &dyn fmt::Display, depth: usize) -> Result<GgufArray> {
        if depth >= MAX_ARRAY_DEPTH {
            bail!(
                "{}: at byte {}: {} nests arrays deeper than {} levels",
                self.path,
                self.pos,
                what,
                MAX_ARRAY_DEPTH
            );
        }
        let at = self.pos;
        let et = self.u32(&format_args!("the element type of {what}"))?;
        let Some(min) = min_value_size(et) else {
            bail!(
                "{}: at byte {}: {} has unknown element type {} (expected 0..=12)",
                self.path,
                at,
                what,
                et
            );
        };
        let at_n = self.pos;
        let n = self.u64(&format_args!("the length of {what}"))?;
        let n = self.check_count(
            n,
            min,
            at_n,
            &format_args!("{what} (array of {})", value_type_name(et)),
        )?;
        macro_rules! prim {
            ($v:ident, $t:ty) => {{
                let b = self.bytes((n * std::mem::size_of::<$t>()) as u64, what)?;
                GgufArray::$v(
                    b.chunks_exact(std::mem::size_of::<$t>())
                        .map(|c| <$t>::from_le_bytes(c.try_into().unwrap_or_default()))
                        .collect(),
                )
            }};
        }
        Ok(match et {
            vt::U8 => GgufArray::U8(self.bytes(n as u64, what)?.to_vec()),
            vt::I8 => GgufArray::I8(
                self.bytes(n as u64, what)?
                    .iter()
                    .map(|&b| b as i8)
                    .collect(),
            ),
            vt::U16 => prim!(U16, u16),
            vt::I16 => prim!(I16, i16),
            vt::U32 => prim!(U32, u32),
            vt::I32 => prim!(I32, i32),
            vt::F32 => prim!(F32, f32),
            vt::U64 => prim!(U64, u64),
            vt::I64 => prim!(I64, i64),
            vt::F64 => prim!(F64, f64),
            vt::BOOL => {
                let mut v = Vec::with_capacity(n);
                for i in 0..n {
                    v.push(self.bool(&format_args!("element {i} of {what}"))?);
                }
                GgufArray::Bool(v)
            }
            vt::STRING => {
                let mut v = Vec::with_capacity(n);
                for i in 0..n {
                    v.push(self.string(&format_args!("element {i} of {what}"), false)?);
                }
                GgufArray::String(v)
            }
            vt::ARRAY => {
                let mut v = Vec::with_capacity(n);
                for i in 0..n {
                    v.push(self.array(&format_args!("element {i} of {what}"), depth + 1)?);
                }
                GgufArray::Array(v)
            }
            _ => unreachable_type(self.path, at, et)?,
        })
    }
}

fn unreachable_type(path: &str, at: usize, et: u32) -> Result<GgufArray> {
    bail!("{path}: at byte {at}: unknown array element type {et}")
}

// ---------------------------------------------------------------------------------------------
// The file
// ---------------------------------------------------------------------------------------------

/// Where a tensor lives and what it is.
#[derive(Clone, Debug, PartialEq)]
pub struct GgufTensorInfo {
    pub name: String,
    pub dtype: GgmlType,
    /// GGUF order: `ne0` (contiguous) first.
    pub dims: Vec<u64>,
    /// Row-major shape: `dims` reversed (`[ne1, ne0]` for a matrix).
    pub shape: Vec<usize>,
    /// Offset of the data relative to the start of the data section, as stored.
    pub rel_offset: u64,
    /// Absolute byte offset of the data in the file.
    pub offset: u64,
    /// Bytes of data.
    pub nbytes: u64,
}

impl GgufTensorInfo {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

enum Bytes {
    Mmap(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl Bytes {
    fn as_slice(&self) -> &[u8] {
        match self {
            Bytes::Mmap(m) => m,
            Bytes::Owned(v) => v,
        }
    }
}

/// An open GGUF file: parsed metadata and tensor infos over the mapped bytes.
pub struct GgufFile {
    path: PathBuf,
    display: String,
    bytes: Bytes,
    version: u32,
    alignment: u64,
    data_offset: u64,
    metadata: Vec<(String, GgufValue)>,
    meta_index: HashMap<String, usize>,
    tensors: Vec<GgufTensorInfo>,
    tensor_index: HashMap<String, usize>,
}

impl fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("n_kv", &self.metadata.len())
            .field("n_tensors", &self.tensors.len())
            .finish()
    }
}

impl GgufFile {
    /// Open and validate a GGUF file (memory-mapped; the file must not change while open).
    pub fn open(path: impl AsRef<Path>) -> Result<GgufFile> {
        let path = path.as_ref();
        let display = path.display().to_string();
        let file = std::fs::File::open(path)
            .with_context(|| format!("{display}: cannot open GGUF file"))?;
        let len = file
            .metadata()
            .with_context(|| format!("{display}: cannot stat GGUF file"))?
            .len();
        let bytes = if len == 0 {
            Bytes::Owned(Vec::new())
        } else {
            // SAFETY: read-only map; we never hand out references that outlive `self`, and the
            // usual mmap caveat applies (the file must not be truncated while open).
            let m = unsafe { memmap2::Mmap::map(&file) }
                .with_context(|| format!("{display}: cannot mmap GGUF file"))?;
            Bytes::Mmap(m)
        };
        Self::parse(path.to_path_buf(), bytes)
    }

    /// Parse GGUF bytes held in memory; `name` is used in error messages.
    pub fn from_bytes(bytes: Vec<u8>, name: &str) -> Result<GgufFile> {
        Self::parse(PathBuf::from(name), Bytes::Owned(bytes))
    }

    fn parse(path: PathBuf, bytes: Bytes) -> Result<GgufFile> {
        let display = path.display().to_string();
        let buf = bytes.as_slice();
        let p = display.as_str();
        if buf.is_empty() {
            bail!("{p}: empty file (expected a GGUF header: magic \"GGUF\", version, counts)");
        }
        let mut c = Cursor {
            buf,
            pos: 0,
            path: p,
        };
        let magic = c.arr::<4>(&"the magic")?;
        if magic != GGUF_MAGIC {
            bail!(
                "{p}: at byte 0: bad magic {:?} (bytes {:02x?}); expected \"GGUF\" — not a GGUF file",
                String::from_utf8_lossy(&magic),
                magic
            );
        }
        let version = c.u32(&"the version")?;
        if !(2..=3).contains(&version) {
            bail!("{p}: at byte 4: unsupported GGUF version {version}; supported: 2, 3");
        }
        let n_tensors = c.u64(&"the tensor count")?;
        let n_kv = c.u64(&"the metadata count")?;
        // Each KV takes >= 13 bytes (key length 8, type 4, value >= 1); each tensor info >= 24.
        c.check_count(n_kv, 13, 16, &"the metadata section (n_kv)")?;
        c.check_count(n_tensors, 24, 8, &"the tensor-info section (n_tensors)")?;

        let mut metadata: Vec<(String, GgufValue)> = Vec::with_capacity(n_kv as usize);
        let mut meta_index = HashMap::with_capacity(n_kv as usize);
        for i in 0..n_kv {
            let at = c.pos;
            let key = c.string(&format_args!("metadata key #{i}"), true)?;
            let t = c.u32(&format_args!("the value type of metadata key `{key}`"))?;
            let v = c.value(t, &format_args!("metadata key `{key}`"), 0)?;
            if meta_index.insert(key.clone(), metadata.len()).is_some() {
                bail!("{p}: at byte {at}: duplicate metadata key `{key}`");
            }
            metadata.push((key, v));
        }

        let alignment = match meta_index.get("general.alignment").map(|&i| &metadata[i].1) {
            None => DEFAULT_ALIGNMENT,
            Some(v) => match v.as_u64() {
                Some(a) if a > 0 && a.is_power_of_two() => a,
                _ => bail!(
                    "{p}: metadata key `general.alignment` is {:?}; expected a power of two (u32)",
                    v
                ),
            },
        };

        let mut tensors: Vec<GgufTensorInfo> = Vec::with_capacity(n_tensors as usize);
        let mut tensor_index = HashMap::with_capacity(n_tensors as usize);
        for i in 0..n_tensors {
            let at = c.pos;
            let name = c.string(&format_args!("the name of tensor #{i}"), true)?;
            let what = format!("tensor `{name}`");
            let at_nd = c.pos;
            let n_dims = c.u32(&format_args!("n_dims of {what}"))?;
            if n_dims as usize > MAX_DIMS {
                bail!("{p}: at byte {at_nd}: {what} has n_dims = {n_dims}; expected at most {MAX_DIMS}");
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for d in 0..n_dims {
                let at_d = c.pos;
                let ne = c.u64(&format_args!("dimension {d} of {what}"))?;
                if ne > i64::MAX as u64 {
                    bail!("{p}: at byte {at_d}: dimension {d} of {what} is {ne}, which is negative as ggml's int64");
                }
                dims.push(ne);
            }
            let at_t = c.pos;
            let dtype = GgmlType(c.u32(&format_args!("the type of {what}"))?);
            let rel_offset = c.u64(&format_args!("the data offset of {what}"))?;
            if !dtype.is_known() {
                bail!(
                    "{p}: at byte {at_t}: {what} has unknown tensor type id {}; supported: {}",
                    dtype.0,
                    GgmlType::supported_list()
                );
            }
            let numel = dims
                .iter()
                .try_fold(1u64, |acc, &d| acc.checked_mul(d))
                .ok_or_else(|| anyhow!("{p}: {what}: element count of dims {dims:?} overflows"))?;
            let bs = dtype.block_size();
            if let Some(&ne0) = dims.first() {
                if ne0 % bs != 0 {
                    bail!(
                        "{p}: {what} has type {dtype} with blocks of {bs}, but its row length ne0 = {ne0} is not a multiple of {bs}"
                    );
                }
            }
            let nbytes = dtype.bytes_for(numel).ok_or_else(|| {
                anyhow!("{p}: {what}: byte size of dims {dims:?} in {dtype} overflows")
            })?;
            if rel_offset % alignment != 0 {
                bail!(
                    "{p}: {what} has data offset {rel_offset}, which is not a multiple of the alignment {alignment}"
                );
            }
            let shape = dims
                .iter()
                .rev()
                .map(|&d| usize::try_from(d))
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|_| {
                    anyhow!("{p}: {what}: dims {dims:?} do not fit this platform's usize")
                })?;
            if tensor_index.insert(name.clone(), tensors.len()).is_some() {
                bail!("{p}: at byte {at}: duplicate tensor name `{name}`");
            }
            tensors.push(GgufTensorInfo {
                name,
                dtype,
                dims,
                shape,
                rel_offset,
                offset: 0,
                nbytes,
            });
        }

        let end_infos = c.pos as u64;
        let data_offset = end_infos
            .checked_add(alignment - 1)
            .map(|x| x / alignment * alignment)
            .ok_or_else(|| anyhow!("{p}: data section offset overflows"))?;
        let file_len = buf.len() as u64;
        if !tensors.is_empty() && data_offset > file_len {
            bail!(
                "{p}: truncated: the tensor data section should start at byte {data_offset}, but the file is {file_len} bytes"
            );
        }
        for t in &mut tensors {
            let start = data_offset.checked_add(t.rel_offset);
            let end = start.and_then(|s| s.checked_add(t.nbytes));
            match (start, end) {
                (Some(s), Some(e)) if e <= file_len => t.offset = s,
                _ => bail!(
                    "{p}: tensor `{}` ({}, dims {:?}) needs bytes [{}, {}) (data section at {} + offset {}, {} bytes), but the file is only {} bytes",
                    t.name,
                    t.dtype,
                    t.dims,
                    data_offset.saturating_add(t.rel_offset),
                    data_offset.saturating_add(t.rel_offset).saturating_add(t.nbytes),
                    data_offset,
                    t.rel_offset,
                    t.nbytes,
                    file_len
                ),
            }
        }

        Ok(GgufFile {
            path,
            display,
            bytes,
            version,
            alignment,
            data_offset,
            metadata,
            meta_index,
            tensors,
            tensor_index,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
    pub fn version(&self) -> u32 {
        self.version
    }
    pub fn alignment(&self) -> u64 {
        self.alignment
    }
    /// Absolute offset of the tensor data section.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    // ----- metadata -----

    /// All metadata, in file order.
    pub fn metadata(&self) -> &[(String, GgufValue)] {
        &self.metadata
    }
    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.meta_index.get(key).map(|&i| &self.metadata[i].1)
    }
    pub fn contains_key(&self, key: &str) -> bool {
        self.meta_index.contains_key(key)
    }
    /// The value of `key`, or an error "FILE: missing metadata key `key`".
    pub fn require(&self, key: &str) -> Result<&GgufValue> {
        self.get(key)
            .ok_or_else(|| anyhow!("{}: missing metadata key `{key}`", self.display))
    }
    fn wrong_type(&self, key: &str, v: &GgufValue, expected: &str) -> anyhow::Error {
        let shown = match v {
            GgufValue::Array(a) => format!("{} with {} elements", a.type_desc(), a.len()),
            GgufValue::String(s) => format!("string {s:?}"),
            other => format!("{} {:?}", other.type_name(), other),
        };
        anyhow!(
            "{}: metadata key `{key}` is {shown}; expected {expected}",
            self.display
        )
    }
    /// Any integer width; error if missing, negative or not an integer.
    pub fn get_u64(&self, key: &str) -> Result<u64> {
        let v = self.require(key)?;
        v.as_u64()
            .ok_or_else(|| self.wrong_type(key, v, "a non-negative integer"))
    }
    pub fn get_u32(&self, key: &str) -> Result<u32> {
        let v = self.require(key)?;
        v.as_u64()
            .and_then(|x| u32::try_from(x).ok())
            .ok_or_else(|| self.wrong_type(key, v, "an integer in u32 range"))
    }
    pub fn get_usize(&self, key: &str) -> Result<usize> {
        let v = self.require(key)?;
        v.as_u64()
            .and_then(|x| usize::try_from(x).ok())
            .ok_or_else(|| self.wrong_type(key, v, "a non-negative integer"))
    }
    pub fn get_i64(&self, key: &str) -> Result<i64> {
        let v = self.require(key)?;
        v.as_i64()
            .ok_or_else(|| self.wrong_type(key, v, "an integer"))
    }
    /// f32 or f64.
    pub fn get_f32(&self, key: &str) -> Result<f32> {
        let v = self.require(key)?;
        v.as_f32().ok_or_else(|| self.wrong_type(key, v, "a float"))
    }
    pub fn get_f64(&self, key: &str) -> Result<f64> {
        let v = self.require(key)?;
        v.as_f64().ok_or_else(|| self.wrong_type(key, v, "a float"))
    }
    pub fn get_bool(&self, key: &str) -> Result<bool> {
        let v = self.require(key)?;
        v.as_bool().ok_or_else(|| self.wrong_type(key, v, "a bool"))
    }
    pub fn get_str(&self, key: &str) -> Result<&str> {
        let v = self.require(key)?;
        v.as_str()
            .ok_or_else(|| self.wrong_type(key, v, "a string"))
    }
    pub fn get_array(&self, key: &str) -> Result<&GgufArray> {
        let v = self.require(key)?;
        v.as_array()
            .ok_or_else(|| self.wrong_type(key, v, "an array"))
    }
    pub fn get_str_array(&self, key: &str) -> Result<&[String]> {
        let v = self.require(key)?;
        match v {
            GgufValue::Array(GgufArray::String(s)) => Ok(s),
            _ => Err(self.wrong_type(key, v, "an array of strings")),
        }
    }
    /// An array of integers of any width, as i64.
    pub fn get_i64_array(&self, key: &str) -> Result<Vec<i64>> {
        let v = self.require(key)?;
        v.as_array()
            .and_then(|a| a.to_i64_vec())
            .ok_or_else(|| self.wrong_type(key, v, "an array of integers"))
    }
    /// An array of f32 or f64, as f32.
    pub fn get_f32_array(&self, key: &str) -> Result<Vec<f32>> {
        let v = self.require(key)?;
        v.as_array()
            .and_then(|a| a.to_f32_vec())
            .ok_or_else(|| self.wrong_type(key, v, "an array of floats"))
    }

    // ----- tensors -----

    /// Tensor names in file order.
    pub fn tensor_names(&self) -> Vec<&str> {
        self.tensors.iter().map(|t| t.name.as_str()).collect()
    }
    pub fn tensor_infos(&self) -> &[GgufTensorInfo] {
        &self.tensors
    }
    /// Storage types and how many tensors use each (for `inspect`), e.g. {"q4_1": 210, ...}.
    pub fn dtype_summary(&self) -> std::collections::BTreeMap<String, usize> {
        let mut m = std::collections::BTreeMap::new();
        for t in &self.tensors {
            *m.entry(t.dtype.name().to_lowercase()).or_insert(0) += 1;
        }
        m
    }
    pub fn tensor_info(&self, name: &str) -> Option<&GgufTensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }
    fn info_or_err(&self, name: &str) -> Result<&GgufTensorInfo> {
        self.tensor_info(name).ok_or_else(|| {
            anyhow!(
                "{}: no tensor named `{name}` ({} tensors in file)",
                self.display,
                self.tensors.len()
            )
        })
    }
    /// The raw (still quantized) bytes of a tensor.
    pub fn tensor_bytes(&self, name: &str) -> Result<&[u8]> {
        let t = self.info_or_err(name)?;
        // Bounds were validated in parse.
        let buf = self.bytes.as_slice();
        buf.get(t.offset as usize..(t.offset + t.nbytes) as usize)
            .ok_or_else(|| anyhow!("{}: tensor `{name}` data out of bounds", self.display))
    }
    /// Dequantize a tensor to f32: (row-major shape, data).
    pub fn dequantize(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        let t = self.info_or_err(name)?;
        if !t.dtype.is_supported() {
            bail!(
                "{}: unsupported tensor type {} for tensor `{name}`; supported: {}",
                self.display,
                t.dtype,
                GgmlType::supported_list()
            );
        }
        let bytes = self.tensor_bytes(name)?;
        let data = dequantize_bytes(t.dtype, bytes, t.numel())
            .with_context(|| format!("{}: tensor `{name}`", self.display))?;
        Ok((t.shape.clone(), data))
    }
}

impl WeightSource for GgufFile {
    fn origin(&self) -> String {
        self.display.clone()
    }
    fn contains(&self, name: &str) -> bool {
        self.tensor_index.contains_key(name)
    }
    fn shape_of(&self, name: &str) -> Option<Vec<usize>> {
        self.tensor_info(name).map(|t| t.shape.clone())
    }
    fn load_f32(&self, name: &str, shape: &[usize], device: &Device) -> Result<Tensor> {
        let t = self.info_or_err(name)?;
        if t.shape != shape {
            bail!(
                "{}: tensor `{name}` has shape {:?} (GGUF dims {:?}, {}), expected {:?}",
                self.display,
                t.shape,
                t.dims,
                t.dtype,
                shape
            );
        }
        let (shape, data) = self.dequantize(name)?;
        Tensor::from_vec(data, shape, device)
            .with_context(|| format!("{}: building tensor `{name}`", self.display))
    }
    fn stored_bytes(&self, name: &str) -> u64 {
        self.tensor_info(name).map_or(0, |t| t.nbytes)
    }
    fn release(&self, name: &str) {
        if let (Some(t), Bytes::Mmap(m)) = (self.tensor_info(name), &self.bytes) {
            crate::formats::release_pages(m, t.offset as usize, t.nbytes as usize);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Dequantization (ggml-quants.c dequantize_row_*)
// ---------------------------------------------------------------------------------------------

#[inline]
fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// Decode `n` elements of type `dtype` from `bytes` (which must be exactly their size).
pub fn dequantize_bytes(dtype: GgmlType, bytes: &[u8], n: usize) -> Result<Vec<f32>> {
    let need = dtype
        .bytes_for(n as u64)
        .ok_or_else(|| anyhow!("{n} elements is not a whole number of {dtype} blocks"))?;
    if need != bytes.len() as u64 {
        bail!(
            "{n} elements of {dtype} need {need} bytes, got {}",
            bytes.len()
        );
    }
    let float = |f: &dyn Fn(&[u8]) -> f32| -> Vec<f32> {
        bytes.chunks_exact(dtype.type_size() as usize).map(f).collect()
    };
    match dtype {
        GgmlType::F32 => Ok(float(&|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))),
        GgmlType::F16 => Ok(float(&|b| f16_at(b, 0))),
        GgmlType::BF16 => Ok(float(&|b| bf16::from_le_bytes([b[0], b[1]]).to_f32())),
        // Every block type: candle's dequantizers (candle_core::quantized::k_quants, ports of
        // ggml-quants.c dequantize_row_*), checked against gguf-py in tests/gguf.rs.
        GgmlType::Q4_0 => candle_blocks::<kq::BlockQ4_0>(dtype, bytes, n),
        GgmlType::Q4_1 => candle_blocks::<kq::BlockQ4_1>(dtype, bytes, n),
        GgmlType::Q5_0 => candle_blocks::<kq::BlockQ5_0>(dtype, bytes, n),
        GgmlType::Q5_1 => candle_blocks::<kq::BlockQ5_1>(dtype, bytes, n),
        GgmlType::Q8_0 => candle_blocks::<kq::BlockQ8_0>(dtype, bytes, n),
        GgmlType::Q8_1 => candle_blocks::<kq::BlockQ8_1>(dtype, bytes, n),
        GgmlType::Q2_K => candle_blocks::<kq::BlockQ2K>(dtype, bytes, n),
        GgmlType::Q3_K => candle_blocks::<kq::BlockQ3K>(dtype, bytes, n),
        GgmlType::Q4_K => candle_blocks::<kq::BlockQ4K>(dtype, bytes, n),
        GgmlType::Q5_K => candle_blocks::<kq::BlockQ5K>(dtype, bytes, n),
        GgmlType::Q6_K => candle_blocks::<kq::BlockQ6K>(dtype, bytes, n),
        GgmlType::Q8_K => candle_blocks::<kq::BlockQ8K>(dtype, bytes, n),
        other => bail!(
            "unsupported tensor type {other}; supported: {}",
            GgmlType::supported_list()
        ),
    }
}

/// Dequantizes `bytes` (already checked to be exactly `n / block_size` blocks of `dtype`) with
/// candle's block type `B`. The bytes are copied into a `Vec<B>` first: the file's bytes need not
/// be aligned for `B` (it holds f16/f32 fields), and candle's own `qtensor_from_ggml` would cast
/// the pointer unaligned and does not support Q8_1/Q8_K.
fn candle_blocks<B: kq::GgmlType>(dtype: GgmlType, bytes: &[u8], n: usize) -> Result<Vec<f32>> {
    let ts = std::mem::size_of::<B>();
    // Guards the copy below: candle's block structs are #[repr(C)] with ggml's exact sizes.
    if ts as u64 != dtype.type_size() || B::BLCK_SIZE as u64 != dtype.block_size() {
        bail!(
            "internal: candle's block for {dtype} is {ts} bytes / {} elements, ggml's is {} / {}",
            B::BLCK_SIZE,
            dtype.type_size(),
            dtype.block_size()
        );
    }
    // ggml files are little-endian; candle's structs are read in the host's byte order.
    if cfg!(target_endian = "big") {
        bail!("quantized GGUF tensors ({dtype}) can only be read on little-endian machines");
    }
    let nb = bytes.len() / ts;
    if nb * ts != bytes.len() || nb * B::BLCK_SIZE != n {
        bail!("{n} elements of {dtype} need {} bytes, got {}", n / B::BLCK_SIZE * ts, bytes.len());
    }
    let mut blocks: Vec<B> = (0..nb).map(|_| B::zeros()).collect();
    // SAFETY: `blocks` owns nb * ts initialized bytes, aligned for B; the source holds exactly
    // nb * ts bytes (checked above) and does not overlap it. Every B (candle's ggml blocks) is
    // plain data made of f16/f32/u8/i8/i16 fields and arrays, so any byte pattern is a valid B.
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), blocks.as_mut_ptr().cast::<u8>(), nb * ts);
    }
    let mut y = vec![0f32; n];
    B::to_float(&blocks, &mut y);
    Ok(y)
}

// ---------------------------------------------------------------------------------------------
// Quantization (ggml-quants.c quantize_row_*_ref)
// ---------------------------------------------------------------------------------------------

/// Encode f32 values as `dtype` (F32, F16, BF16, Q8_0, Q4_0 or Q4_1). `x.len()` must be a
/// multiple of the block size.
pub fn quantize_bytes(dtype: GgmlType, x: &[f32]) -> Result<Vec<u8>> {
    let bs = dtype.block_size() as usize;
    if bs == 0 || !x.len().is_multiple_of(bs) {
        bail!(
            "{} values is not a whole number of {dtype} blocks of {bs}",
            x.len()
        );
    }
    let mut out = Vec::with_capacity(x.len() / bs * dtype.type_size() as usize);
    match dtype {
        GgmlType::F32 => x
            .iter()
            .for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        GgmlType::F16 => x
            .iter()
            .for_each(|v| out.extend_from_slice(&f16::from_f32(*v).to_le_bytes())),
        GgmlType::BF16 => x
            .iter()
            .for_each(|v| out.extend_from_slice(&bf16::from_f32(*v).to_le_bytes())),
        GgmlType::Q8_0 => {
            for blk in x.chunks_exact(32) {
                let amax = blk.iter().fold(0f32, |a, v| a.max(v.abs()));
                let d = amax / 127.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
                out.extend(blk.iter().map(|v| (v * id).round() as i8 as u8));
            }
        }
        GgmlType::Q4_0 => {
            for blk in x.chunks_exact(32) {
                let (mut amax, mut max) = (0f32, 0f32);
                for &v in blk {
                    if amax < v.abs() {
                        amax = v.abs();
                        max = v;
                    }
                }
                let d = max / -8.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
                for j in 0..16 {
                    let xi0 = ((blk[j] * id + 8.5) as i8).min(15) as u8;
                    let xi1 = ((blk[j + 16] * id + 8.5) as i8).min(15) as u8;
                    out.push(xi0 | (xi1 << 4));
                }
            }
        }
        GgmlType::Q4_1 => {
            for blk in x.chunks_exact(32) {
                let (mut min, mut max) = (f32::MAX, -f32::MAX);
                for &v in blk {
                    if v < min {
                        min = v;
                    }
                    if v > max {
                        max = v;
                    }
                }
                let d = (max - min) / 15.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
                out.extend_from_slice(&f16::from_f32(min).to_le_bytes());
                for j in 0..16 {
                    let xi0 = (((blk[j] - min) * id + 0.5) as i8).min(15) as u8;
                    let xi1 = (((blk[j + 16] - min) * id + 0.5) as i8).min(15) as u8;
                    out.push(xi0 | (xi1 << 4));
                }
            }
        }
        other => bail!(
            "cannot quantize to {other}; the writer supports F32, F16, BF16, Q8_0, Q4_0, Q4_1"
        ),
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Writer
// ---------------------------------------------------------------------------------------------

struct PendingTensor {
    name: String,
    dims: Vec<u64>,
    dtype: GgmlType,
    data: Vec<u8>,
}

/// Builds a GGUF v3 file in memory. Metadata and tensors are written in insertion order;
/// `general.alignment` (if added, as an integer) sets the alignment, default 32.
#[derive(Default)]
pub struct GgufWriter {
    metadata: Vec<(String, GgufValue)>,
    tensors: Vec<PendingTensor>,
}

impl GgufWriter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Add (or replace) a metadata value: `w.add("llama.block_count", 30u32)`.
    pub fn add(&mut self, key: &str, value: impl Into<GgufValue>) -> &mut Self {
        let value = value.into();
        if let Some(slot) = self.metadata.iter_mut().find(|(k, _)| k == key) {
            slot.1 = value;
        } else {
            self.metadata.push((key.to_string(), value));
        }
        self
    }
    pub fn add_u32(&mut self, key: &str, v: u32) -> &mut Self {
        self.add(key, v)
    }
    pub fn add_u64(&mut self, key: &str, v: u64) -> &mut Self {
        self.add(key, v)
    }
    pub fn add_i32(&mut self, key: &str, v: i32) -> &mut Self {
        self.add(key, v)
    }
    pub fn add_f32(&mut self, key: &str, v: f32) -> &mut Self {
        self.add(key, v)
    }
    pub fn add_bool(&mut self, key: &str, v: bool) -> &mut Self {
        self.add(key, v)
    }
    pub fn add_string(&mut self, key: &str, v: &str) -> &mut Self {
        self.add(key, v)
    }
    pub fn add_str_array<S: AsRef<str>>(&mut self, key: &str, v: &[S]) -> &mut Self {
        self.add(
            key,
            GgufArray::String(v.iter().map(|s| s.as_ref().to_string()).collect()),
        )
    }
    pub fn add_i32_array(&mut self, key: &str, v: &[i32]) -> &mut Self {
        self.add(key, v.to_vec())
    }
    pub fn add_u32_array(&mut self, key: &str, v: &[u32]) -> &mut Self {
        self.add(key, v.to_vec())
    }
    pub fn add_f32_array(&mut self, key: &str, v: &[f32]) -> &mut Self {
        self.add(key, v.to_vec())
    }

    /// Add a tensor from f32 `data` of row-major `shape`, stored as `dtype` (F32, F16, BF16,
    /// Q8_0, Q4_0, Q4_1; quantized with ggml's reference quantizers).
    pub fn add_tensor(
        &mut self,
        name: &str,
        shape: &[usize],
        data: &[f32],
        dtype: GgmlType,
    ) -> Result<&mut Self> {
        let numel: usize = shape.iter().product();
        if numel != data.len() {
            bail!(
                "tensor `{name}`: shape {shape:?} has {numel} elements but {} values were given",
                data.len()
            );
        }
        let row = shape.last().copied().unwrap_or(1);
        if row % dtype.block_size().max(1) as usize != 0 {
            bail!(
                "tensor `{name}`: row length {row} is not a multiple of the {dtype} block size {}",
                dtype.block_size()
            );
        }
        let bytes = quantize_bytes(dtype, data).with_context(|| format!("tensor `{name}`"))?;
        let dims = shape.iter().rev().map(|&d| d as u64).collect();
        self.push_tensor(name, dims, dtype, bytes)
    }

    /// Add a tensor whose bytes are already encoded; `shape` is row-major. No checks beyond the
    /// byte count (so tests can write types this module cannot decode).
    pub fn add_tensor_raw(
        &mut self,
        name: &str,
        shape: &[usize],
        dtype: GgmlType,
        bytes: Vec<u8>,
    ) -> Result<&mut Self> {
        let dims: Vec<u64> = shape.iter().rev().map(|&d| d as u64).collect();
        let numel = dims.iter().product::<u64>();
        match dtype.bytes_for(numel) {
            Some(n) if n == bytes.len() as u64 => {}
            _ => bail!(
                "tensor `{name}`: {numel} elements of {dtype} do not take {} bytes",
                bytes.len()
            ),
        }
        self.push_tensor(name, dims, dtype, bytes)
    }

    fn push_tensor(
        &mut self,
        name: &str,
        dims: Vec<u64>,
        dtype: GgmlType,
        data: Vec<u8>,
    ) -> Result<&mut Self> {
        if self.tensors.iter().any(|t| t.name == name) {
            bail!("tensor `{name}` added twice");
        }
        if dims.len() > MAX_DIMS {
            bail!(
                "tensor `{name}`: {} dims, GGUF allows at most {MAX_DIMS}",
                dims.len()
            );
        }
        self.tensors.push(PendingTensor {
            name: name.to_string(),
            dims,
            dtype,
            data,
        });
        Ok(self)
    }

    fn alignment(&self) -> Result<u64> {
        alignment_of(&self.metadata)
    }

    /// Serialize as GGUF v3.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let align = self.alignment()? as usize;
        let infos: Vec<TensorHeader> = self
            .tensors
            .iter()
            .map(|t| TensorHeader { name: t.name.clone(), dims: t.dims.clone(), dtype: t.dtype, n_bytes: t.data.len() as u64 })
            .collect();
        let (mut out, offsets, _) = encode_header(&self.metadata, &infos)?;
        let data_start = out.len();
        for (t, off) in self.tensors.iter().zip(offsets) {
            out.resize(data_start + off as usize, 0);
            out.extend_from_slice(&t.data);
        }
        let end = out.len().div_ceil(align) * align;
        out.resize(end, 0);
        Ok(out)
    }

    /// Write to `path` (via a temporary file and a rename).
    pub fn write(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let bytes = self.to_bytes()?;
        let tmp = path.with_extension("gguf.tmp");
        std::fs::write(&tmp, &bytes).with_context(|| format!("{}: cannot write", tmp.display()))?;
        std::fs::rename(&tmp, path)
            .with_context(|| format!("{}: cannot rename into place", path.display()))?;
        Ok(())
    }
}

/// One tensor's entry in a GGUF header: name, GGUF dims (`ne0` first) and type, plus the size of
/// its encoded data (which decides the next tensor's offset).
#[derive(Clone, Debug)]
pub struct TensorHeader {
    pub name: String,
    pub dims: Vec<u64>,
    pub dtype: GgmlType,
    pub n_bytes: u64,
}

/// `general.alignment` from metadata (default 32); anything but a positive power of two is an error.
pub fn alignment_of(metadata: &[(String, GgufValue)]) -> Result<u64> {
    match metadata.iter().find(|(k, _)| k == "general.alignment") {
        None => Ok(DEFAULT_ALIGNMENT),
        Some((_, v)) => match v.as_u64() {
            Some(a) if a > 0 && a.is_power_of_two() => Ok(a),
            _ => bail!("general.alignment must be a power of two, got {v:?}"),
        },
    }
}

/// Encodes a GGUF v3 header: magic, counts, metadata, tensor infos, and the zero padding up to the
/// data section. Returns the bytes, each tensor's offset relative to the data section (each
/// aligned), and the data section's length (the last tensor padded to the alignment). Shared by
/// the in-memory [`GgufWriter`] and streaming writers, which write the header first and then each
/// tensor's `n_bytes` at its offset.
pub fn encode_header(metadata: &[(String, GgufValue)], tensors: &[TensorHeader]) -> Result<(Vec<u8>, Vec<u64>, u64)> {
    let align = alignment_of(metadata)?;
    let mut out = Vec::new();
    out.extend_from_slice(&GGUF_MAGIC);
    out.extend_from_slice(&3u32.to_le_bytes());
    out.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    out.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
    for (k, v) in metadata {
        write_str(&mut out, k);
        out.extend_from_slice(&v.type_id().to_le_bytes());
        write_value(&mut out, v);
    }
    let mut offset = 0u64;
    let mut offsets = Vec::with_capacity(tensors.len());
    for t in tensors {
        if t.dims.len() > MAX_DIMS {
            bail!("tensor `{}`: {} dims, GGUF allows at most {MAX_DIMS}", t.name, t.dims.len());
        }
        write_str(&mut out, &t.name);
        out.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
        for d in &t.dims {
            out.extend_from_slice(&d.to_le_bytes());
        }
        out.extend_from_slice(&t.dtype.0.to_le_bytes());
        out.extend_from_slice(&offset.to_le_bytes());
        offsets.push(offset);
        offset = offset
            .checked_add(t.n_bytes)
            .map(|x| x.div_ceil(align) * align)
            .ok_or_else(|| anyhow!("tensor `{}`: data offsets overflow", t.name))?;
    }
    let data_start = (out.len() as u64).div_ceil(align) * align;
    out.resize(data_start as usize, 0);
    Ok((out, offsets, offset))
}

fn write_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn write_value(out: &mut Vec<u8>, v: &GgufValue) {
    match v {
        GgufValue::U8(x) => out.push(*x),
        GgufValue::I8(x) => out.push(*x as u8),
        GgufValue::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::Bool(x) => out.push(*x as u8),
        GgufValue::String(s) => write_str(out, s),
        GgufValue::Array(a) => write_array(out, a),
    }
}

fn write_array(out: &mut Vec<u8>, a: &GgufArray) {
    out.extend_from_slice(&a.elem_type().to_le_bytes());
    out.extend_from_slice(&(a.len() as u64).to_le_bytes());
    macro_rules! each {
        ($v:expr) => {
            for x in $v {
                out.extend_from_slice(&x.to_le_bytes());
            }
        };
    }
    match a {
        GgufArray::U8(v) => out.extend_from_slice(v),
        GgufArray::I8(v) => out.extend(v.iter().map(|&x| x as u8)),
        GgufArray::U16(v) => each!(v),
        GgufArray::I16(v) => each!(v),
        GgufArray::U32(v) => each!(v),
        GgufArray::I32(v) => each!(v),
        GgufArray::U64(v) => each!(v),
        GgufArray::I64(v) => each!(v),
        GgufArray::F32(v) => each!(v),
        GgufArray::F64(v) => each!(v),
        GgufArray::Bool(v) => out.extend(v.iter().map(|&x| x as u8)),
        GgufArray::String(v) => v.iter().for_each(|s| write_str(out, s)),
        GgufArray::Array(v) => v.iter().for_each(|x| write_array(out, x)),
    }
}
