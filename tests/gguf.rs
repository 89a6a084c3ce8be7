//! GGUF reader/writer: round trips, exact hand-made blocks, hostile inputs, golden and real files.

mod common;

use std::path::{Path, PathBuf};

use candle_core::Device;
use half::f16;
use headroom::formats::gguf::{GgmlType, GgufArray, GgufFile, GgufValue, GgufWriter};
use headroom::model::weights::WeightSource;

// ---------------------------------------------------------------------------------------------
// helpers

fn tmpdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

fn write_bytes(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).expect("write");
    p
}

/// Open must fail; returns the error text (whole chain).
fn open_err(path: &Path) -> String {
    match GgufFile::open(path) {
        Ok(_) => panic!("{} opened, but should have failed", path.display()),
        Err(e) => format!("{e:#}"),
    }
}

fn assert_contains(hay: &str, needles: &[&str]) {
    for n in needles {
        assert!(hay.contains(n), "error text {hay:?} should contain {n:?}");
    }
}

/// Deterministic pseudo-random values in [-scale, scale).
fn values(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let u = ((s >> 40) as f32) / ((1u64 << 24) as f32);
            (2.0 * u - 1.0) * scale
        })
        .collect()
}

// Raw builders for hand-made (and broken) files.
fn s(out: &mut Vec<u8>, x: &str) {
    out.extend_from_slice(&(x.len() as u64).to_le_bytes());
    out.extend_from_slice(x.as_bytes());
}
fn header(version: u32, n_tensors: u64, n_kv: u64) -> Vec<u8> {
    let mut v = b"GGUF".to_vec();
    v.extend_from_slice(&version.to_le_bytes());
    v.extend_from_slice(&n_tensors.to_le_bytes());
    v.extend_from_slice(&n_kv.to_le_bytes());
    v
}

/// A small valid file: 3 KVs, 2 tensors (F32 [2, 32] and Q8_0 [4, 32]).
fn small_file() -> Vec<u8> {
    let mut w = GgufWriter::new();
    w.add("general.architecture", "llama");
    w.add("llama.block_count", 2u32);
    w.add_str_array("tokenizer.ggml.tokens", &["a", "b", "ab"]);
    w.add_tensor("a.weight", &[2, 32], &values(64, 1, 1.0), GgmlType::F32)
        .unwrap();
    w.add_tensor("b.weight", &[4, 32], &values(128, 2, 1.0), GgmlType::Q8_0)
        .unwrap();
    w.to_bytes().unwrap()
}

// ---------------------------------------------------------------------------------------------
// metadata

#[test]
fn metadata_round_trip_every_type() {
    let nested = GgufArray::Array(vec![
        GgufArray::U32(vec![1, 2, 3]),
        GgufArray::U32(vec![]),
        GgufArray::U32(vec![7]),
    ]);
    let nested2 = GgufArray::Array(vec![GgufArray::Array(vec![GgufArray::String(vec![
        "deep".into(),
    ])])]);
    let entries: Vec<(&str, GgufValue)> = vec![
        ("t.u8", GgufValue::U8(200)),
        ("t.i8", GgufValue::I8(-100)),
        ("t.u16", GgufValue::U16(60000)),
        ("t.i16", GgufValue::I16(-30000)),
        ("t.u32", GgufValue::U32(4_000_000_000)),
        ("t.i32", GgufValue::I32(-2_000_000_000)),
        ("t.u64", GgufValue::U64(u64::MAX)),
        ("t.i64", GgufValue::I64(i64::MIN)),
        ("t.f32", GgufValue::F32(1e-5)),
        ("t.f64", GgufValue::F64(std::f64::consts::PI)),
        ("t.bool_t", GgufValue::Bool(true)),
        ("t.bool_f", GgufValue::Bool(false)),
        ("t.str", GgufValue::String("héllo wörld ✓ 日本".into())),
        ("t.str_empty", GgufValue::String(String::new())),
        ("t.a_u8", GgufArray::U8(vec![0, 1, 255]).into()),
        ("t.a_i8", GgufArray::I8(vec![-128, 0, 127]).into()),
        ("t.a_u16", GgufArray::U16(vec![1, 65535]).into()),
        ("t.a_i16", GgufArray::I16(vec![-1, 32767]).into()),
        ("t.a_u32", GgufArray::U32(vec![1, 2, 3]).into()),
        ("t.a_i32", GgufArray::I32(vec![-1, 0, 4]).into()),
        ("t.a_u64", GgufArray::U64(vec![u64::MAX, 0]).into()),
        ("t.a_i64", GgufArray::I64(vec![i64::MIN, 5]).into()),
        (
            "t.a_f32",
            GgufArray::F32(vec![0.5, -1.25, f32::INFINITY]).into(),
        ),
        ("t.a_f64", GgufArray::F64(vec![1e300, -0.0]).into()),
        ("t.a_bool", GgufArray::Bool(vec![true, false, true]).into()),
        (
            "t.a_str",
            GgufArray::String(vec!["Ġthe".into(), "".into(), "a b".into()]).into(),
        ),
        ("t.a_empty", GgufArray::F32(vec![]).into()),
        ("t.a_nested", nested.clone().into()),
        ("t.a_nested2", nested2.clone().into()),
    ];
    let mut w = GgufWriter::new();
    for (k, v) in &entries {
        w.add(k, v.clone());
    }
    w.add_u32("c.u32", 7)
        .add_u64("c.u64", 8)
        .add_f32("c.f32", 0.25)
        .add_bool("c.bool", true);
    w.add_string("c.str", "x")
        .add_i32_array("c.ai32", &[3, 4])
        .add_u32_array("c.au32", &[5]);
    w.add_f32_array("c.af32", &[1.5]);
    let dir = tmpdir();
    let p = dir.path().join("meta.gguf");
    w.write(&p).unwrap();
    let g = GgufFile::open(&p).unwrap();
    assert_eq!(g.version(), 3);
    assert_eq!(g.tensor_names().len(), 0);
    assert_eq!(g.metadata().len(), entries.len() + 8);
    for (k, v) in &entries {
        assert_eq!(g.get(k), Some(v), "key {k}");
    }
    // file order kept
    assert_eq!(g.metadata()[0].0, "t.u8");

    // typed getters accept any integer width
    assert_eq!(g.get_u64("t.u8").unwrap(), 200);
    assert_eq!(g.get_u64("t.u16").unwrap(), 60000);
    assert_eq!(g.get_u32("t.u32").unwrap(), 4_000_000_000);
    assert_eq!(g.get_u64("t.u64").unwrap(), u64::MAX);
    assert_eq!(g.get_i64("t.i8").unwrap(), -100);
    assert_eq!(g.get_i64("t.i64").unwrap(), i64::MIN);
    assert_eq!(g.get_usize("c.u32").unwrap(), 7);
    assert_eq!(g.get_f32("t.f32").unwrap(), 1e-5);
    assert_eq!(g.get_f64("t.f64").unwrap(), std::f64::consts::PI);
    assert!(g.get_bool("t.bool_t").unwrap());
    assert_eq!(g.get_str("t.str").unwrap(), "héllo wörld ✓ 日本");
    assert_eq!(
        g.get_str_array("t.a_str").unwrap(),
        &["Ġthe".to_string(), String::new(), "a b".into()]
    );
    assert_eq!(g.get_i64_array("t.a_u8").unwrap(), vec![0, 1, 255]);
    assert_eq!(g.get_i64_array("t.a_i32").unwrap(), vec![-1, 0, 4]);
    assert_eq!(g.get_f32_array("t.a_f32").unwrap()[1], -1.25);
    assert_eq!(g.get_array("t.a_nested").unwrap(), &nested);
    assert_eq!(g.get_i64_array("c.ai32").unwrap(), vec![3, 4]);

    // errors name the file, the key and what was expected
    let e = format!("{:#}", g.get_u64("llama.block_count").unwrap_err());
    assert_contains(
        &e,
        &["meta.gguf", "missing metadata key `llama.block_count`"],
    );
    let e = format!("{:#}", g.get_u64("t.i8").unwrap_err());
    assert_contains(&e, &["meta.gguf", "`t.i8`", "non-negative integer"]);
    let e = format!("{:#}", g.get_u32("t.u64").unwrap_err());
    assert_contains(&e, &["`t.u64`", "u32 range"]);
    let e = format!("{:#}", g.get_str("t.u32").unwrap_err());
    assert_contains(&e, &["`t.u32`", "u32", "expected a string"]);
    let e = format!("{:#}", g.get_str_array("t.a_u32").unwrap_err());
    assert_contains(&e, &["array of u32", "expected an array of strings"]);
    let e = format!("{:#}", g.get_f32("t.str").unwrap_err());
    assert_contains(&e, &["`t.str`", "expected a float"]);
}

#[test]
fn v2_files_are_read() {
    let mut b = small_file();
    b[4..8].copy_from_slice(&2u32.to_le_bytes());
    let g = GgufFile::from_bytes(b, "v2.gguf").unwrap();
    assert_eq!(g.version(), 2);
    assert_eq!(g.tensor_names(), vec!["a.weight", "b.weight"]);
}

#[test]
fn custom_alignment_is_honoured() {
    let mut w = GgufWriter::new();
    w.add("general.alignment", 64u32);
    w.add_tensor("x", &[1, 32], &values(32, 3, 1.0), GgmlType::Q4_1)
        .unwrap();
    w.add_tensor("y", &[1, 32], &values(32, 4, 1.0), GgmlType::F16)
        .unwrap();
    let g = GgufFile::from_bytes(w.to_bytes().unwrap(), "align.gguf").unwrap();
    assert_eq!(g.alignment(), 64);
    assert_eq!(g.data_offset() % 64, 0);
    for t in g.tensor_infos() {
        assert_eq!(t.offset % 64, 0, "{}", t.name);
    }
    assert_eq!(g.tensor_info("y").unwrap().rel_offset, 64);
    let (_, y) = g.dequantize("y").unwrap();
    for (a, b) in y.iter().zip(values(32, 4, 1.0)) {
        assert!((a - b).abs() <= b.abs() * 1e-3);
    }
}

// ---------------------------------------------------------------------------------------------
// tensors

#[test]
fn tensor_round_trip_all_writer_types() {
    let shape = [3usize, 64];
    let n = 192;
    let mut x = values(n, 42, 2.0);
    // one block of identical values (d = 0 paths) and one with an outlier
    for v in &mut x[64..96] {
        *v = 0.75;
    }
    x[100] = 9.0;
    let types = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::BF16,
        GgmlType::Q8_0,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
    ];
    let mut w = GgufWriter::new();
    for t in types {
        w.add_tensor(&format!("w.{}", t.name()), &shape, &x, t)
            .unwrap();
    }
    let g = GgufFile::from_bytes(w.to_bytes().unwrap(), "rt.gguf").unwrap();
    for t in types {
        let name = format!("w.{}", t.name());
        let info = g.tensor_info(&name).unwrap();
        assert_eq!(info.dtype, t);
        assert_eq!(info.shape, vec![3, 64]);
        assert_eq!(info.dims, vec![64, 3], "GGUF dims are ne0 first");
        let (sh, y) = g.dequantize(&name).unwrap();
        assert_eq!(sh, vec![3, 64]);
        assert_eq!(y.len(), n);
        for (b, (blk_x, blk_y)) in x.chunks(32).zip(y.chunks(32)).enumerate() {
            let amax = blk_x.iter().fold(0f32, |a, v| a.max(v.abs()));
            let min = blk_x.iter().fold(f32::MAX, |a, &v| a.min(v));
            let max = blk_x.iter().fold(f32::MIN, |a, &v| a.max(v));
            for (i, (&a, &q)) in blk_x.iter().zip(blk_y).enumerate() {
                let err = (a - q).abs();
                let bound = match t {
                    GgmlType::F32 => 0.0,
                    GgmlType::F16 => a.abs() * 2f32.powi(-11),
                    GgmlType::BF16 => a.abs() * 2f32.powi(-8),
                    // step d = amax/127, round to nearest, d stored as f16
                    GgmlType::Q8_0 => 0.5 * amax / 127.0 + amax * 2f32.powi(-10),
                    // step |d| = amax/8; the largest magnitude may clamp to 7*d (error d)
                    GgmlType::Q4_0 => amax / 8.0 * 1.01,
                    // step d = (max-min)/15, plus f16 rounding of d and min
                    GgmlType::Q4_1 => {
                        0.5 * (max - min) / 15.0
                            + (max - min) * 2f32.powi(-9)
                            + min.abs() * 2f32.powi(-10)
                    }
                    _ => unreachable!(),
                };
                assert!(
                    err <= bound,
                    "{name} block {b} elem {i}: x={a} got {q} err {err} > {bound}"
                );
            }
        }
        // constant block: exact except Q8_0 (whose d = 0.75/127 is rounded to f16)
        if t != GgmlType::Q8_0 {
            assert!(
                y[64..96].iter().all(|&q| q == 0.75),
                "{name}: {:?}",
                &y[64..96]
            );
        }
    }
    // F32 is exact
    assert_eq!(g.dequantize("w.F32").unwrap().1, x);
}

#[test]
fn hand_computed_q4_1_block() {
    // d = 0.5 (f16 0x3800), m = -1.0 (f16 0xBC00), qs[j] = j | (15 - j) << 4
    let mut block = vec![0x00, 0x38, 0x00, 0xBC];
    for j in 0..16u8 {
        block.push(j | ((15 - j) << 4));
    }
    let mut expected = vec![0f32; 32];
    for j in 0..16 {
        expected[j] = j as f32 * 0.5 - 1.0;
        expected[j + 16] = (15 - j) as f32 * 0.5 - 1.0;
    }
    let mut w = GgufWriter::new();
    w.add_tensor_raw("raw", &[1, 32], GgmlType::Q4_1, block.clone())
        .unwrap();
    // the reference quantizer reproduces the same bytes from the same values
    w.add_tensor("quantized", &[1, 32], &expected, GgmlType::Q4_1)
        .unwrap();
    let g = GgufFile::from_bytes(w.to_bytes().unwrap(), "q41.gguf").unwrap();
    assert_eq!(g.dequantize("raw").unwrap().1, expected);
    assert_eq!(g.tensor_bytes("quantized").unwrap(), &block[..]);
    assert_eq!(g.dequantize("quantized").unwrap().1, expected);
    assert_eq!(g.tensor_info("raw").unwrap().nbytes, 20);
}

#[test]
fn hand_computed_q8_0_block() {
    // d = 0.25 (f16 0x3400); qs = [-127, -15, -14, ..., 15]
    let mut qs: Vec<i8> = vec![-127];
    qs.extend((1..32).map(|j| j as i8 - 16));
    let mut block = vec![0x00, 0x34];
    block.extend(qs.iter().map(|&q| q as u8));
    let expected: Vec<f32> = qs.iter().map(|&q| q as f32 * 0.25).collect();
    assert_eq!(expected[0], -31.75);
    let mut w = GgufWriter::new();
    w.add_tensor_raw("raw", &[32], GgmlType::Q8_0, block.clone())
        .unwrap();
    w.add_tensor("quantized", &[32], &expected, GgmlType::Q8_0)
        .unwrap();
    let g = GgufFile::from_bytes(w.to_bytes().unwrap(), "q80.gguf").unwrap();
    assert_eq!(g.dequantize("raw").unwrap(), (vec![32], expected.clone()));
    assert_eq!(g.tensor_bytes("quantized").unwrap(), &block[..]);
}

/// Q8_1 as ggml lays it out (ggml-common.h block_q8_1: half d, half s = d * sum(qs), int8
/// qs[32]; 36 bytes). gguf-py 0.19 still sizes it 40 bytes, so it has no golden from gguf-py.
#[test]
fn hand_computed_q8_1_blocks() {
    // Block 0: d = 0.5 (f16 0x3800), qs = -16..15; block 1: d = -2 (f16 0xC000), qs = 127, -128, 0...
    let q0: Vec<i8> = (0..32).map(|j| j as i8 - 16).collect();
    let mut q1 = vec![0i8; 32];
    q1[0] = 127;
    q1[1] = -128;
    let mut bytes = Vec::new();
    for (d_bits, qs) in [(0x3800u16, &q0), (0xC000u16, &q1)] {
        let d = f16::from_bits(d_bits).to_f32();
        let s = f16::from_f32(d * qs.iter().map(|&q| q as f32).sum::<f32>());
        bytes.extend_from_slice(&d_bits.to_le_bytes());
        bytes.extend_from_slice(&s.to_le_bytes());
        bytes.extend(qs.iter().map(|&q| q as u8));
    }
    assert_eq!(bytes.len(), 72);
    let mut expected: Vec<f32> = q0.iter().map(|&q| q as f32 * 0.5).collect();
    expected.extend(q1.iter().map(|&q| q as f32 * -2.0));
    assert_eq!((expected[0], expected[32], expected[33]), (-8.0, -254.0, 256.0));
    let mut w = GgufWriter::new();
    w.add_tensor_raw("q81", &[2, 32], GgmlType::Q8_1, bytes).unwrap();
    let g = GgufFile::from_bytes(w.to_bytes().unwrap(), "q81.gguf").unwrap();
    assert_eq!(g.dequantize("q81").unwrap(), (vec![2, 32], expected));
}

#[test]
fn hand_computed_q4_0_and_q5_blocks() {
    // Q4_0: d = -0.5 (f16 0xB800); qs[j] = j | (15-j) << 4  ->  (q - 8) * d
    let mut b40 = vec![0x00, 0xB8];
    for j in 0..16u8 {
        b40.push(j | ((15 - j) << 4));
    }
    // Q5_0: d = 1.0 (0x3C00), qh bit j set for odd j -> high bit of element j; qs all 0x21
    let qh: u32 = 0xAAAA_AAAA;
    let mut b50 = vec![0x00, 0x3C];
    b50.extend_from_slice(&qh.to_le_bytes());
    b50.extend(std::iter::repeat_n(0x21u8, 16));
    // Q5_1: d = 0.5, m = 2.0 (0x4000), same qh/qs
    let mut b51 = vec![0x00, 0x38, 0x00, 0x40];
    b51.extend_from_slice(&qh.to_le_bytes());
    b51.extend(std::iter::repeat_n(0x21u8, 16));
    let mut w = GgufWriter::new();
    w.add_tensor_raw("q40", &[32], GgmlType::Q4_0, b40).unwrap();
    w.add_tensor_raw("q50", &[32], GgmlType::Q5_0, b50).unwrap();
    w.add_tensor_raw("q51", &[32], GgmlType::Q5_1, b51).unwrap();
    let g = GgufFile::from_bytes(w.to_bytes().unwrap(), "q.gguf").unwrap();
    let (_, y) = g.dequantize("q40").unwrap();
    for j in 0..16 {
        assert_eq!(y[j], (j as f32 - 8.0) * -0.5);
        assert_eq!(y[j + 16], ((15 - j) as f32 - 8.0) * -0.5);
    }
    // low nibble 1 / high nibble 2; element i gets +16 when bit i of qh is set (i odd)
    let q5 = |i: usize| -> f32 {
        let low = if i < 16 { 1 } else { 2 };
        (low + if i % 2 == 1 { 16 } else { 0 }) as f32
    };
    let (_, y) = g.dequantize("q50").unwrap();
    for (i, &v) in y.iter().enumerate() {
        assert_eq!(v, q5(i) - 16.0, "q5_0 elem {i}");
    }
    let (_, y) = g.dequantize("q51").unwrap();
    for (i, &v) in y.iter().enumerate() {
        assert_eq!(v, q5(i) * 0.5 + 2.0, "q5_1 elem {i}");
    }
}

#[test]
fn hand_computed_q4_k_and_q6_k_blocks() {
    // Q4_K: d = 1.0, dmin = 0.5; sub-block scales/mins: j<4: scales[j] = sc, scales[j+4] = m (6 bits)
    // j>=4: low 4 bits in scales[j+4], high 2 bits in the top of scales[j-4] / scales[j].
    let sc = [1u8, 2, 3, 4, 5, 17, 33, 63];
    let mn = [0u8, 1, 2, 3, 4, 20, 40, 62];
    let mut scales = [0u8; 12];
    for j in 0..8 {
        if j < 4 {
            scales[j] = sc[j];
            scales[j + 4] = mn[j];
        } else {
            scales[j + 4] = (sc[j] & 0xF) | ((mn[j] & 0xF) << 4);
            scales[j - 4] |= (sc[j] >> 4) << 6;
            scales[j] |= (mn[j] >> 4) << 6;
        }
    }
    let mut b = vec![0x00, 0x3C, 0x00, 0x38];
    b.extend_from_slice(&scales);
    let qs: Vec<u8> = (0..128)
        .map(|i| (i % 16) as u8 | (((i / 8) % 16) as u8) << 4)
        .collect();
    b.extend_from_slice(&qs);
    assert_eq!(b.len(), 144);
    let mut expect_k4 = vec![0f32; 256];
    for chunk in 0..4 {
        for l in 0..32 {
            let q = qs[chunk * 32 + l];
            let (s0, m0) = (sc[2 * chunk] as f32, mn[2 * chunk] as f32 * 0.5);
            let (s1, m1) = (sc[2 * chunk + 1] as f32, mn[2 * chunk + 1] as f32 * 0.5);
            expect_k4[chunk * 64 + l] = s0 * (q & 0xF) as f32 - m0;
            expect_k4[chunk * 64 + 32 + l] = s1 * (q >> 4) as f32 - m1;
        }
    }
    // Q6_K: element e in half h (128 each), position p = e % 128: group g = p / 32, l = p % 32;
    // 6-bit q = low 4 bits from ql (g 0/1: low nibble of ql[l + 32*g]; g 2/3: high nibble of
    // ql[l + 32*(g-2)]) | 2 bits of qh[l] at shift 2g; scale sc[8h + l/16 + 2g]; w = d*sc*(q-32).
    let ql: Vec<u8> = (0..128).map(|i| (i * 7 % 256) as u8).collect();
    let qh: Vec<u8> = (0..64).map(|i| (i * 13 % 256) as u8).collect();
    let sc6: Vec<i8> = (0..16).map(|i| i as i8 * 9 - 70).collect();
    let mut b6 = ql.clone();
    b6.extend_from_slice(&qh);
    b6.extend(sc6.iter().map(|&x| x as u8));
    b6.extend_from_slice(&f16::from_f32(0.125).to_le_bytes());
    assert_eq!(b6.len(), 210);
    let mut expect_k6 = vec![0f32; 256];
    for (e, out) in expect_k6.iter_mut().enumerate() {
        let (h, p) = (e / 128, e % 128);
        let (g, l) = (p / 32, p % 32);
        let qlb = ql[64 * h + l + 32 * (g % 2)];
        let low = if g < 2 { qlb & 0xF } else { qlb >> 4 };
        let hi = (qh[32 * h + l] >> (2 * g)) & 3;
        let q = (low | (hi << 4)) as i32 - 32;
        let s = sc6[8 * h + l / 16 + 2 * g] as f32;
        *out = 0.125 * s * q as f32;
    }
    let mut w = GgufWriter::new();
    w.add_tensor_raw("k4", &[256], GgmlType::Q4_K, b).unwrap();
    w.add_tensor_raw("k6", &[256], GgmlType::Q6_K, b6).unwrap();
    let g = GgufFile::from_bytes(w.to_bytes().unwrap(), "k.gguf").unwrap();
    assert_eq!(g.dequantize("k4").unwrap().1, expect_k4);
    assert_eq!(g.dequantize("k6").unwrap().1, expect_k6);
}

#[test]
fn writer_rejects_bad_tensors() {
    let mut w = GgufWriter::new();
    let e = w
        .add_tensor("x", &[2, 48], &values(96, 1, 1.0), GgmlType::Q4_1)
        .err()
        .map(|e| format!("{e:#}"))
        .unwrap();
    assert_contains(&e, &["`x`", "48", "block size 32"]);
    let e = w
        .add_tensor("x", &[2, 32], &values(10, 1, 1.0), GgmlType::F32)
        .err()
        .map(|e| format!("{e:#}"))
        .unwrap();
    assert_contains(&e, &["`x`", "64 elements", "10 values"]);
    let e = w
        .add_tensor("x", &[256], &values(256, 1, 1.0), GgmlType::Q4_K)
        .err()
        .map(|e| format!("{e:#}"))
        .unwrap();
    assert_contains(&e, &["cannot quantize to Q4_K"]);
    w.add_tensor("x", &[32], &values(32, 1, 1.0), GgmlType::F32)
        .unwrap();
    let e = w
        .add_tensor("x", &[32], &values(32, 1, 1.0), GgmlType::F32)
        .err()
        .map(|e| format!("{e:#}"))
        .unwrap();
    assert_contains(&e, &["added twice"]);
}

#[test]
fn weight_source_loads_and_checks_shapes() {
    let dir = tmpdir();
    let p = write_bytes(dir.path(), "ws.gguf", &small_file());
    let g = GgufFile::open(&p).unwrap();
    assert!(g.contains("a.weight"));
    assert!(!g.contains("nope"));
    assert_eq!(g.shape_of("b.weight"), Some(vec![4, 32]));
    assert!(g.origin().contains("ws.gguf"));
    let t = g.load_f32("a.weight", &[2, 32], &Device::Cpu).unwrap();
    assert_eq!(t.dims(), &[2, 32]);
    let v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
    assert_eq!(v, values(64, 1, 1.0));
    let t = g.load_f32("b.weight", &[4, 32], &Device::Cpu).unwrap();
    assert_eq!(t.dims(), &[4, 32]);

    let e = format!(
        "{:#}",
        g.load_f32("a.weight", &[32, 2], &Device::Cpu).unwrap_err()
    );
    assert_contains(
        &e,
        &["ws.gguf", "`a.weight`", "[2, 32]", "expected [32, 2]"],
    );
    let e = format!(
        "{:#}",
        g.load_f32("missing.weight", &[1], &Device::Cpu)
            .unwrap_err()
    );
    assert_contains(&e, &["ws.gguf", "no tensor named `missing.weight`"]);
}

// ---------------------------------------------------------------------------------------------
// hostile input

#[test]
fn missing_and_empty_files() {
    let dir = tmpdir();
    let e = open_err(&dir.path().join("nope.gguf"));
    assert_contains(&e, &["nope.gguf", "cannot open"]);
    let p = write_bytes(dir.path(), "empty.gguf", &[]);
    assert_contains(&open_err(&p), &["empty.gguf", "empty file"]);
}

#[test]
fn bad_magic_and_version() {
    let dir = tmpdir();
    let mut b = small_file();
    b[0..4].copy_from_slice(b"GGML");
    let p = write_bytes(dir.path(), "magic.gguf", &b);
    assert_contains(
        &open_err(&p),
        &["magic.gguf", "byte 0", "bad magic", "\"GGUF\""],
    );
    let p = write_bytes(dir.path(), "short.gguf", b"GG");
    assert_contains(
        &open_err(&p),
        &[
            "short.gguf",
            "truncated at byte 0",
            "need 4 bytes, only 2 left",
        ],
    );
    for v in [1u32, 4, 0xFFFF_FFFF] {
        let mut b = small_file();
        b[4..8].copy_from_slice(&v.to_le_bytes());
        let p = write_bytes(dir.path(), "ver.gguf", &b);
        assert_contains(
            &open_err(&p),
            &[
                "ver.gguf",
                &format!("unsupported GGUF version {v}"),
                "supported: 2, 3",
            ],
        );
    }
}

/// Byte offsets of the sections of `small_file()`.
fn small_file_layout() -> (usize, usize, usize) {
    let g = GgufFile::from_bytes(small_file(), "x").unwrap();
    // KV section starts at 24; tensor infos start after the 3 KVs.
    let kv_start = 24;
    let mut kv_len = 0;
    kv_len += 8 + "general.architecture".len() + 4 + 8 + 5;
    kv_len += 8 + "llama.block_count".len() + 4 + 4;
    kv_len += 8 + "tokenizer.ggml.tokens".len() + 4 + 4 + 8 + (8 + 1) * 2 + (8 + 2);
    let infos_start = kv_start + kv_len;
    (kv_start, infos_start, g.data_offset() as usize)
}

#[test]
fn truncated_files() {
    let b = small_file();
    let (kv, infos, data) = small_file_layout();
    let dir = tmpdir();
    // in the middle of the KV section (inside the token array)
    let cut = infos - 5;
    assert!(cut > kv);
    let p = write_bytes(dir.path(), "trunc_kv.gguf", &b[..cut]);
    let e = open_err(&p);
    assert_contains(&e, &["trunc_kv.gguf", "`tokenizer.ggml.tokens`"]);
    assert!(
        e.contains("truncated at byte") || e.contains("claims"),
        "{e}"
    );
    // in the tensor infos
    let p = write_bytes(dir.path(), "trunc_info.gguf", &b[..infos + 20]);
    let e = open_err(&p);
    assert_contains(&e, &["trunc_info.gguf", "tensor"]);
    // inside the data: the second tensor no longer fits
    let g = GgufFile::from_bytes(b.clone(), "x").unwrap();
    let tb = g.tensor_info("b.weight").unwrap();
    let end = (tb.offset + tb.nbytes) as usize;
    assert!(end <= b.len() && end > data + 10);
    let p = write_bytes(dir.path(), "trunc_data.gguf", &b[..end - 10]);
    let e = open_err(&p);
    assert_contains(
        &e,
        &[
            "trunc_data.gguf",
            "tensor `b.weight`",
            "needs bytes",
            &format!("file is only {} bytes", end - 10),
        ],
    );
    // every prefix that cuts into a section fails cleanly (never a panic)
    for n in 0..end {
        let keep = b[..n].to_vec();
        let valid_without_tail = GgufFile::from_bytes(keep, "prefix.gguf");
        assert!(
            valid_without_tail.is_err(),
            "prefix of {n} bytes should not open"
        );
    }
}

#[test]
fn random_corruption_never_panics() {
    let b = small_file();
    let (_, _, data) = small_file_layout();
    for i in 0..data {
        for v in [0x00u8, 0xFF, 0x7F, 0x80, 0x09] {
            let mut c = b.clone();
            c[i] = v;
            // Ok or Err, but no panic and no huge allocation
            if let Ok(g) = GgufFile::from_bytes(c, "fuzz.gguf") {
                for name in g.tensor_names() {
                    let _ = g.dequantize(name);
                }
            }
        }
    }
}

#[test]
fn huge_lengths_are_errors_not_allocations() {
    let dir = tmpdir();
    // string length 2^60 for the first key
    let mut b = header(3, 0, 1);
    b.extend_from_slice(&(1u64 << 60).to_le_bytes());
    b.extend_from_slice(b"general.architecture");
    let p = write_bytes(dir.path(), "strlen.gguf", &b);
    assert_contains(
        &open_err(&p),
        &[
            "strlen.gguf",
            "byte 24",
            "metadata key #0",
            "1152921504606846976 bytes",
            "only 20 bytes are left",
        ],
    );

    // string length 2^60 for a value
    let mut b = header(3, 0, 1);
    s(&mut b, "general.name");
    b.extend_from_slice(&8u32.to_le_bytes());
    b.extend_from_slice(&(1u64 << 60).to_le_bytes());
    let p = write_bytes(dir.path(), "valstr.gguf", &b);
    assert_contains(
        &open_err(&p),
        &["valstr.gguf", "`general.name`", "1152921504606846976"],
    );

    // array of 10^9 u32 in a tiny file
    let mut b = header(3, 0, 1);
    s(&mut b, "tokenizer.ggml.token_type");
    b.extend_from_slice(&9u32.to_le_bytes());
    b.extend_from_slice(&4u32.to_le_bytes());
    b.extend_from_slice(&1_000_000_000u64.to_le_bytes());
    b.extend_from_slice(&[0u8; 16]);
    let p = write_bytes(dir.path(), "arrlen.gguf", &b);
    assert_contains(
        &open_err(&p),
        &[
            "arrlen.gguf",
            "`tokenizer.ggml.token_type`",
            "array of u32",
            "claims 1000000000 elements",
            "only 16 bytes are left",
        ],
    );

    // array of 2^62 strings (count * 8 overflows u64 in a naive check)
    let mut b = header(3, 0, 1);
    s(&mut b, "tokenizer.ggml.tokens");
    b.extend_from_slice(&9u32.to_le_bytes());
    b.extend_from_slice(&8u32.to_le_bytes());
    b.extend_from_slice(&(1u64 << 62).to_le_bytes());
    let p = write_bytes(dir.path(), "arrstr.gguf", &b);
    assert_contains(
        &open_err(&p),
        &["arrstr.gguf", "claims 4611686018427387904 elements"],
    );

    // deeply nested arrays
    let mut b = header(3, 0, 1);
    s(&mut b, "deep");
    b.extend_from_slice(&9u32.to_le_bytes());
    for _ in 0..100 {
        b.extend_from_slice(&9u32.to_le_bytes());
        b.extend_from_slice(&1u64.to_le_bytes());
    }
    let p = write_bytes(dir.path(), "deep.gguf", &b);
    assert_contains(&open_err(&p), &["deep.gguf", "nests arrays deeper"]);

    // n_tensors and n_kv huge
    let p = write_bytes(dir.path(), "ntensors.gguf", &header(3, u64::MAX / 2, 0));
    assert_contains(
        &open_err(&p),
        &[
            "ntensors.gguf",
            "n_tensors",
            "claims 9223372036854775807 elements",
        ],
    );
    let p = write_bytes(dir.path(), "nkv.gguf", &header(3, 0, 1 << 40));
    assert_contains(
        &open_err(&p),
        &["nkv.gguf", "n_kv", "claims 1099511627776 elements"],
    );

    // unknown value type, bad bool
    let mut b = header(3, 0, 1);
    s(&mut b, "k");
    b.extend_from_slice(&13u32.to_le_bytes());
    b.extend_from_slice(&[0u8; 8]);
    let p = write_bytes(dir.path(), "vtype.gguf", &b);
    assert_contains(
        &open_err(&p),
        &["vtype.gguf", "`k`", "unknown value type 13"],
    );
    let mut b = header(3, 0, 1);
    s(&mut b, "k");
    b.extend_from_slice(&7u32.to_le_bytes());
    b.push(2);
    let p = write_bytes(dir.path(), "bool.gguf", &b);
    assert_contains(
        &open_err(&p),
        &["bool.gguf", "`k`", "byte value 2", "expected 0 or 1"],
    );
}

/// One tensor info by hand: name "t", dims, type, offset; no KVs.
fn one_tensor_file(dims: &[u64], ty: u32, offset: u64, data_len: usize) -> Vec<u8> {
    let mut b = header(3, 1, 0);
    s(&mut b, "t");
    b.extend_from_slice(&(dims.len() as u32).to_le_bytes());
    for d in dims {
        b.extend_from_slice(&d.to_le_bytes());
    }
    b.extend_from_slice(&ty.to_le_bytes());
    b.extend_from_slice(&offset.to_le_bytes());
    let pad = b.len().div_ceil(32) * 32;
    b.resize(pad + data_len, 0);
    b
}

#[test]
fn bad_tensor_infos() {
    let dir = tmpdir();
    // sanity: the builder makes a valid file
    let g = GgufFile::from_bytes(one_tensor_file(&[8, 2], 0, 0, 64), "ok.gguf").unwrap();
    assert_eq!(g.tensor_info("t").unwrap().shape, vec![2, 8]);

    let p = write_bytes(
        dir.path(),
        "offset.gguf",
        &one_tensor_file(&[8, 2], 0, 1 << 20, 64),
    );
    assert_contains(
        &open_err(&p),
        &["offset.gguf", "tensor `t`", "needs bytes", "1048576"],
    );
    let p = write_bytes(
        dir.path(),
        "offset_max.gguf",
        &one_tensor_file(&[8, 2], 0, u64::MAX - 31, 64),
    );
    assert_contains(&open_err(&p), &["offset_max.gguf", "tensor `t`"]);
    let p = write_bytes(
        dir.path(),
        "unaligned.gguf",
        &one_tensor_file(&[8, 2], 0, 4, 128),
    );
    assert_contains(
        &open_err(&p),
        &["unaligned.gguf", "tensor `t`", "offset 4", "alignment 32"],
    );
    let p = write_bytes(
        dir.path(),
        "ndims.gguf",
        &one_tensor_file(&[1; 9], 0, 0, 64),
    );
    assert_contains(
        &open_err(&p),
        &["ndims.gguf", "tensor `t`", "n_dims = 9", "at most 4"],
    );
    let p = write_bytes(
        dir.path(),
        "dims_overflow.gguf",
        &one_tensor_file(&[1 << 40, 1 << 40], 0, 0, 64),
    );
    assert_contains(
        &open_err(&p),
        &["dims_overflow.gguf", "tensor `t`", "overflows"],
    );
    let p = write_bytes(
        dir.path(),
        "dims_big.gguf",
        &one_tensor_file(&[1 << 30, 1 << 20], 0, 0, 64),
    );
    assert_contains(
        &open_err(&p),
        &["dims_big.gguf", "tensor `t`", "needs bytes"],
    );
    let p = write_bytes(
        dir.path(),
        "dim_neg.gguf",
        &one_tensor_file(&[u64::MAX], 0, 0, 64),
    );
    assert_contains(&open_err(&p), &["dim_neg.gguf", "tensor `t`", "negative"]);
    let p = write_bytes(
        dir.path(),
        "rowlen.gguf",
        &one_tensor_file(&[48, 1], 3, 0, 64),
    );
    assert_contains(
        &open_err(&p),
        &[
            "rowlen.gguf",
            "tensor `t`",
            "Q4_1 (id 3)",
            "ne0 = 48",
            "multiple of 32",
        ],
    );
    let p = write_bytes(
        dir.path(),
        "typeid.gguf",
        &one_tensor_file(&[32], 77, 0, 64),
    );
    assert_contains(
        &open_err(&p),
        &[
            "typeid.gguf",
            "tensor `t`",
            "unknown tensor type id 77",
            "supported: F32",
        ],
    );

    // duplicate names
    let mut b = header(3, 2, 0);
    for _ in 0..2 {
        s(&mut b, "t");
        b.extend_from_slice(&1u32.to_le_bytes());
        b.extend_from_slice(&8u64.to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        b.extend_from_slice(&0u64.to_le_bytes());
    }
    b.resize(b.len().div_ceil(32) * 32 + 32, 0);
    let p = write_bytes(dir.path(), "dup.gguf", &b);
    assert_contains(&open_err(&p), &["dup.gguf", "duplicate tensor name `t`"]);

    // bad general.alignment
    let mut w = GgufWriter::new();
    w.add("general.alignment", 3u32);
    let b = {
        // the writer refuses it too
        assert!(w.to_bytes().is_err());
        let mut b = header(3, 0, 1);
        s(&mut b, "general.alignment");
        b.extend_from_slice(&4u32.to_le_bytes());
        b.extend_from_slice(&3u32.to_le_bytes());
        b
    };
    let p = write_bytes(dir.path(), "align.gguf", &b);
    assert_contains(
        &open_err(&p),
        &["align.gguf", "general.alignment", "power of two"],
    );
}

#[test]
fn unsupported_tensor_type_is_a_clear_error() {
    // Types found in the wild that candle cannot dequantize: IQ* codebook quants, ternary TQ*.
    for (ty, name) in [(GgmlType(16), "IQ2_XXS"), (GgmlType(23), "IQ4_XS"), (GgmlType(34), "TQ1_0"), (GgmlType(39), "MXFP4")] {
        let dir = tmpdir();
        let mut w = GgufWriter::new();
        let n = ty.block_size() as usize;
        w.add_tensor_raw("blk.0.w", &[n], ty, vec![0u8; ty.type_size() as usize])
            .unwrap();
        let p = dir.path().join("iq.gguf");
        w.write(&p).unwrap();
        let g = GgufFile::open(&p).unwrap(); // opening is fine
        assert_eq!(g.tensor_info("blk.0.w").unwrap().dtype, ty);
        let e = format!("{:#}", g.dequantize("blk.0.w").unwrap_err());
        assert_contains(
            &e,
            &[
                "iq.gguf",
                &format!("unsupported tensor type {name} (id {}) for tensor `blk.0.w`", ty.0),
                "supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q8_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q8_K",
            ],
        );
        let e = format!("{:#}", g.load_f32("blk.0.w", &[n], &Device::Cpu).unwrap_err());
        assert_contains(&e, &[&format!("unsupported tensor type {name}")]);
    }
}

/// Every K-quant and every other block type candle dequantizes is accepted (zero blocks decode to
/// zeros), with the byte count checked.
#[test]
fn every_supported_type_decodes_and_checks_its_size() {
    for &ty in GgmlType::SUPPORTED.iter() {
        let n = 2 * ty.block_size() as usize;
        let bytes = vec![0u8; 2 * ty.type_size() as usize];
        let y = headroom::formats::gguf::dequantize_bytes(ty, &bytes, n).unwrap_or_else(|e| panic!("{ty}: {e:#}"));
        assert_eq!(y, vec![0.0; n], "{ty}");
        let e = format!("{:#}", headroom::formats::gguf::dequantize_bytes(ty, &bytes[1..], n).unwrap_err());
        assert!(e.contains("need"), "{ty}: {e}");
    }
    for name in ["Q2_K", "Q3_K", "Q5_K", "Q8_K", "Q8_1"] {
        assert!(GgmlType::SUPPORTED.iter().any(|t| t.name() == name), "{name} should be supported");
    }
}

// ---------------------------------------------------------------------------------------------
// golden: our dequantization vs gguf-py's

#[test]
fn golden_quants_match_gguf_py() {
    // HEADROOM_GGUF_GOLDEN_DIR: check another quants.gguf + quants_ref.safetensors pair.
    let dir = match std::env::var_os("HEADROOM_GGUF_GOLDEN_DIR") {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/gguf"),
    };
    let (gp, rp) = (dir.join("quants.gguf"), dir.join("quants_ref.safetensors"));
    // Committed golden files (or the folder named by the variable) are never optional.
    assert!(gp.exists() && rp.exists(), "{} / {} missing (written by tools/make_golden.py)", gp.display(), rp.display());
    let g = GgufFile::open(&gp).unwrap();
    let ref_bytes = std::fs::read(&rp).unwrap();
    let st = safetensors::SafeTensors::deserialize(&ref_bytes).unwrap();
    let mut checked = 0;
    let mut types = std::collections::BTreeSet::new();
    for info in g.tensor_infos() {
        let r = st
            .tensor(&info.name)
            .unwrap_or_else(|_| panic!("reference has no tensor `{}`", info.name));
        assert_eq!(r.dtype(), safetensors::Dtype::F32, "{}", info.name);
        let want: Vec<f32> = r
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let (shape, got) = g.dequantize(&info.name).unwrap();
        assert_eq!(got.len(), want.len(), "{}", info.name);
        assert_eq!(
            shape.iter().product::<usize>(),
            r.shape().iter().product::<usize>(),
            "{}",
            info.name
        );
        let max_diff = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(
            max_diff <= 1e-6,
            "{} ({}): max abs diff {max_diff}",
            info.name,
            info.dtype
        );
        types.insert(info.dtype.name());
        checked += 1;
    }
    eprintln!("golden: {checked} tensors checked, types {types:?}");
    assert!(checked > 0);
    // The default golden covers every supported type (K-quants included).
    if std::env::var_os("HEADROOM_GGUF_GOLDEN_DIR").is_none() {
        // Q8_1 has no gguf-py golden (see hand_computed_q8_1_blocks).
        let all: std::collections::BTreeSet<&str> =
            GgmlType::SUPPORTED.iter().map(|t| t.name()).filter(|&n| n != "Q8_1").collect();
        assert_eq!(types, all, "quants.gguf should hold one tensor of every supported type but Q8_1");
    }
}

// ---------------------------------------------------------------------------------------------
// the real default model (from the asset cache)

fn asset(rel: &str) -> Option<PathBuf> {
    common::cached_asset(rel)
}

#[test]
fn real_smollm2_gguf() {
    let Some(p) = asset("models/SmolLM2-135M-Instruct.Q4_1.gguf") else {
        return;
    };
    let t0 = std::time::Instant::now();
    let g = GgufFile::open(&p).unwrap();
    let t_open = t0.elapsed();
    assert_eq!(g.version(), 3);
    assert_eq!(g.tensor_names().len(), 272);
    assert_eq!(g.get_str("general.architecture").unwrap(), "llama");
    assert_eq!(g.get_u64("llama.block_count").unwrap(), 30);
    assert_eq!(g.get_u64("llama.embedding_length").unwrap(), 576);
    assert_eq!(g.get_u64("llama.attention.head_count").unwrap(), 9);
    assert_eq!(g.get_u64("llama.attention.head_count_kv").unwrap(), 3);
    assert_eq!(g.get_u64("llama.feed_forward_length").unwrap(), 1536);
    assert_eq!(g.get_f32("llama.rope.freq_base").unwrap(), 100000.0);
    assert_eq!(g.get_u64("llama.rope.dimension_count").unwrap(), 64);
    assert_eq!(
        g.get_f32("llama.attention.layer_norm_rms_epsilon").unwrap(),
        1e-5
    );
    assert_eq!(g.get_str("tokenizer.ggml.model").unwrap(), "gpt2");
    assert_eq!(g.get_str("tokenizer.ggml.pre").unwrap(), "smollm");
    assert_eq!(
        g.get_str_array("tokenizer.ggml.tokens").unwrap().len(),
        49152
    );
    assert_eq!(
        g.get_str_array("tokenizer.ggml.merges").unwrap().len(),
        48900
    );
    assert_eq!(g.get_u32("tokenizer.ggml.bos_token_id").unwrap(), 1);
    assert_eq!(g.get_u32("tokenizer.ggml.eos_token_id").unwrap(), 2);
    assert_eq!(g.get_u32("tokenizer.ggml.unknown_token_id").unwrap(), 0);
    assert!(!g.get_bool("tokenizer.ggml.add_bos_token").unwrap());

    let q = g.tensor_info("blk.0.attn_q.weight").unwrap();
    assert_eq!(q.dtype, GgmlType::Q4_1);
    assert_eq!(q.shape, vec![576, 576]);
    assert_eq!(
        g.tensor_info("blk.0.attn_k.weight").unwrap().shape,
        vec![192, 576]
    );
    assert_eq!(
        g.tensor_info("blk.0.ffn_down.weight").unwrap().shape,
        vec![576, 1536]
    );
    let emb = g.tensor_info("token_embd.weight").unwrap();
    assert_eq!(
        (emb.dtype, emb.shape.clone()),
        (GgmlType::Q8_0, vec![49152, 576])
    );
    assert!(
        g.tensor_info("output.weight").is_none(),
        "unembedding is tied"
    );
    let (shape, w) = g.dequantize("blk.0.attn_q.weight").unwrap();
    assert_eq!(shape, vec![576, 576]);
    assert!(w.iter().all(|v| v.is_finite()));
    let rms = (w.iter().map(|v| v * v).sum::<f32>() / w.len() as f32).sqrt();
    assert!(rms > 1e-3 && rms < 10.0, "rms {rms}");
    let t = g
        .load_f32("blk.0.attn_norm.weight", &[576], &Device::Cpu)
        .unwrap();
    assert_eq!(t.dims(), &[576]);

    // everything dequantizes; count parameters
    let t1 = std::time::Instant::now();
    let mut params = 0usize;
    for name in g.tensor_names() {
        let (_, v) = g.dequantize(name).unwrap();
        assert!(v.iter().all(|x| x.is_finite()), "{name}");
        params += v.len();
    }
    let t_deq = t1.elapsed();
    assert_eq!(params, 134_515_008);
    eprintln!("real GGUF: open {t_open:?}, dequantize all 272 tensors {t_deq:?}");
}
