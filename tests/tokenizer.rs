//! Tokenizers: a small byte-level BPE built in a GGUF by the writer, the other constructors, and
//! parity with the real GPT-2 / GPT-NeoX / SmolLM2 tokenizers (from the asset cache + golden ids).

mod common;

use std::path::{Path, PathBuf};

use headroom::formats::gguf::{GgufFile, GgufWriter};
use headroom::tokenizer::Tokenizer;

// ---------------------------------------------------------------------------------------------
// a small tokenizer

/// GPT-2's bytes_to_unicode: the printable stand-in for each byte.
fn byte_chars() -> Vec<char> {
    let mut bs: Vec<u32> = (b'!' as u32..=b'~' as u32)
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .collect();
    let mut cs = bs.clone();
    let mut n = 0;
    for b in 0..256u32 {
        if !bs.contains(&b) {
            bs.push(b);
            cs.push(256 + n);
            n += 1;
        }
    }
    let mut out = vec![' '; 256];
    for (b, c) in bs.into_iter().zip(cs) {
        out[b as usize] = char::from_u32(c).unwrap();
    }
    out
}

const MERGES: &[&str] = &["Ġ t", "h e", "Ġt he", "1 2", "Ġ a", "i n", "Ġ 1", "12 3"];
const SPECIALS: &[&str] = &["<|endoftext|>", "<|im_start|>", "<|im_end|>"];

/// 256 byte tokens, then one token per merge, then the specials (control tokens).
fn small_vocab() -> (Vec<String>, Vec<i32>) {
    let mut tokens: Vec<String> = byte_chars().into_iter().map(|c| c.to_string()).collect();
    for m in MERGES {
        let (a, b) = m.split_once(' ').unwrap();
        tokens.push(format!("{a}{b}"));
    }
    let mut types = vec![1; tokens.len()];
    for s in SPECIALS {
        tokens.push(s.to_string());
        types.push(3);
    }
    (tokens, types)
}

fn small_gguf(pre: Option<&str>) -> GgufFile {
    let (tokens, types) = small_vocab();
    let mut w = GgufWriter::new();
    w.add("tokenizer.ggml.model", "gpt2");
    if let Some(p) = pre {
        w.add("tokenizer.ggml.pre", p);
    }
    w.add_str_array("tokenizer.ggml.tokens", &tokens);
    w.add_i32_array("tokenizer.ggml.token_type", &types);
    w.add_str_array("tokenizer.ggml.merges", MERGES);
    w.add_u32("tokenizer.ggml.bos_token_id", tokens.len() as u32 - 2);
    w.add_u32("tokenizer.ggml.eos_token_id", tokens.len() as u32 - 1);
    w.add_u32("tokenizer.ggml.unknown_token_id", tokens.len() as u32 - 3);
    w.add_bool("tokenizer.ggml.add_bos_token", false);
    GgufFile::from_bytes(w.to_bytes().unwrap(), "small.gguf").unwrap()
}

const TRICKY: &[&str] = &[
    "",
    " ",
    "   leading and trailing   ",
    "Hello, world! The theme: they're here.",
    "tabs\tand\nnewlines\r\n\n\nend",
    "émoji 🦀 and 日本語 and Ελληνικά",
    "e\u{301} combining, \u{200b}zero-width, \u{0} nul, \u{7f} del",
    "it's they'll we've I'M",
    "numbers 12 123 1234567890 3.14159 -42",
    "    indented code() { return x[0]; }",
    "<|endoftext|> specials <|im_start|>user\nhi<|im_end|>",
];

#[test]
fn small_gguf_round_trips() {
    for pre in [
        None,
        Some("gpt2"),
        Some("default"),
        Some("smollm"),
        Some("llama-bpe"),
        Some("llama3"),
        Some("qwen2"),
    ] {
        let tok = Tokenizer::from_gguf(&small_gguf(pre)).unwrap();
        assert_eq!(
            tok.vocab_size(),
            256 + MERGES.len() + SPECIALS.len(),
            "{pre:?}"
        );
        for text in TRICKY {
            let ids = tok.encode(text).unwrap();
            let back = tok.decode(&ids).unwrap();
            if pre == Some("qwen2") {
                // qwen2 normalizes to NFC: e + U+0301 becomes é
                use_nfc_compare(text, &back);
            } else {
                assert_eq!(&back, text, "pre {pre:?}: ids {ids:?}");
            }
        }
    }
}

fn use_nfc_compare(text: &str, back: &str) {
    let composed = text.replace("e\u{301}", "é");
    assert_eq!(back, composed);
}

#[test]
fn merges_apply_in_rank_order() {
    let tok = Tokenizer::from_gguf(&small_gguf(Some("gpt2"))).unwrap();
    let id = |t: &str| {
        tok.token_to_id(t)
            .unwrap_or_else(|| panic!("no token {t:?}"))
    };
    assert_eq!(tok.encode(" the").unwrap(), vec![id("Ġthe")]);
    assert_eq!(tok.encode("the").unwrap(), vec![id("t"), id("he")]);
    assert_eq!(tok.encode(" in").unwrap(), vec![id("Ġ"), id("in")]);
    // gpt2 pre-tokenizer keeps digit runs together: "123" -> "12" + "3" -> "123"
    assert_eq!(tok.encode("123").unwrap(), vec![id("123")]);
    // "1 2" (rank 3) beats "Ġ 1" (rank 6)
    assert_eq!(tok.encode(" 12").unwrap(), vec![id("Ġ"), id("12")]);
    assert_eq!(tok.encode(" 1").unwrap(), vec![id("Ġ1")]);

    let merges = tok.merges();
    assert_eq!(merges.len(), MERGES.len());
    assert_eq!(merges[0], ("Ġ".to_string(), "t".to_string()));
    assert_eq!(merges[2], ("Ġt".to_string(), "he".to_string()));
    let mids = tok.merge_token_ids();
    assert_eq!(mids.len(), MERGES.len());
    for (r, (a, b)) in merges.iter().enumerate() {
        assert_eq!(tok.id_to_token(mids[r]).unwrap(), format!("{a}{b}"));
        assert_eq!(mids[r], 256 + r as u32);
    }
    assert_eq!(tok.id_to_token(id("Ġthe")).as_deref(), Some("Ġthe"));
    assert_eq!(tok.id_to_token(99_999), None);
}

#[test]
fn smollm_splits_digits() {
    let tok = Tokenizer::from_gguf(&small_gguf(Some("smollm"))).unwrap();
    let id = |t: &str| tok.token_to_id(t).unwrap();
    assert_eq!(tok.encode("123").unwrap(), vec![id("1"), id("2"), id("3")]);
    assert_eq!(tok.encode(" 12").unwrap(), vec![id("Ġ"), id("1"), id("2")]);
    let ids = tok.encode("pi 3.14159 and 2024").unwrap();
    for i in &ids {
        let t = tok.id_to_token(*i).unwrap();
        assert!(
            t.chars().filter(|c| c.is_ascii_digit()).count() <= 1,
            "token {t:?} holds several digits"
        );
    }
    // non-digit merges still apply
    assert_eq!(tok.encode(" the").unwrap(), vec![id("Ġthe")]);
    // llama3 groups up to 3 digits, qwen2 splits them
    let l3 = Tokenizer::from_gguf(&small_gguf(Some("llama-bpe"))).unwrap();
    assert_eq!(l3.encode("1234").unwrap(), vec![id("123"), id("4")]);
    let q2 = Tokenizer::from_gguf(&small_gguf(Some("qwen2"))).unwrap();
    assert_eq!(q2.encode("123").unwrap(), vec![id("1"), id("2"), id("3")]);
}

#[test]
fn special_tokens_are_not_split() {
    let tok = Tokenizer::from_gguf(&small_gguf(Some("smollm"))).unwrap();
    let eot = tok.token_to_id("<|endoftext|>").unwrap();
    let ims = tok.token_to_id("<|im_start|>").unwrap();
    let ids = tok.encode("a<|endoftext|>b <|im_start|>user").unwrap();
    assert_eq!(ids.iter().filter(|&&i| i == eot).count(), 1, "{ids:?}");
    assert_eq!(ids.iter().filter(|&&i| i == ims).count(), 1, "{ids:?}");
    assert_eq!(tok.encode("<|endoftext|>").unwrap(), vec![eot]);
    assert_eq!(
        tok.decode(&ids).unwrap(),
        "a<|endoftext|>b <|im_start|>user"
    );
    // a partial special is ordinary text
    let ids = tok.encode("<|endoftext|").unwrap();
    assert!(!ids.contains(&eot));
    // bos/eos/unk from metadata; encode adds nothing
    assert_eq!(tok.bos_id(), tok.token_to_id("<|im_start|>"));
    assert_eq!(tok.eos_id(), tok.token_to_id("<|im_end|>"));
    assert_eq!(tok.unk_id(), Some(eot));
    assert!(!tok.add_bos());
    assert_eq!(tok.encode("").unwrap(), Vec::<u32>::new());
    let e = format!("{:#}", tok.decode(&[1_000_000]).unwrap_err());
    assert!(e.contains("1000000"), "{e}");
}

#[test]
fn gguf_tokenizer_errors() {
    let err = |w: &GgufWriter| {
        let g = GgufFile::from_bytes(w.to_bytes().unwrap(), "bad.gguf").unwrap();
        format!("{:#}", Tokenizer::from_gguf(&g).unwrap_err())
    };
    let (tokens, _) = small_vocab();
    let mut w = GgufWriter::new();
    w.add("tokenizer.ggml.model", "gpt2");
    w.add("tokenizer.ggml.pre", "falcon");
    w.add_str_array("tokenizer.ggml.tokens", &tokens);
    w.add_str_array("tokenizer.ggml.merges", MERGES);
    let e = err(&w);
    assert!(
        e.contains("bad.gguf") && e.contains("\"falcon\"") && e.contains("smollm, llama-bpe"),
        "{e}"
    );

    // SentencePiece vocabularies are read (tests/tokenizer_spm.rs) but need their scores.
    w.add("tokenizer.ggml.model", "llama");
    let e = err(&w);
    assert!(e.contains("bad.gguf") && e.contains("tokenizer.ggml.scores"), "{e}");
    w.add("tokenizer.ggml.model", "rwkv");
    let e = err(&w);
    assert!(e.contains("\"rwkv\" is not supported") && e.contains("\"llama\" (SentencePiece"), "{e}");

    let mut w = GgufWriter::new();
    w.add("tokenizer.ggml.model", "gpt2");
    w.add_str_array("tokenizer.ggml.tokens", &tokens);
    let e = err(&w);
    assert!(
        e.contains("missing metadata key `tokenizer.ggml.merges`"),
        "{e}"
    );

    w.add_str_array("tokenizer.ggml.merges", &["Ġ t", "x y"]);
    let e = err(&w);
    assert!(e.contains("bad.gguf") && e.contains("xy"), "{e}");

    w.add_str_array("tokenizer.ggml.merges", MERGES);
    w.add_u32("tokenizer.ggml.bos_token_id", 10_000);
    let e = err(&w);
    assert!(
        e.contains("bos_token_id = 10000") && e.contains("outside the vocabulary"),
        "{e}"
    );

    let g = GgufFile::from_bytes(GgufWriter::new().to_bytes().unwrap(), "none.gguf").unwrap();
    let e = format!("{:#}", Tokenizer::from_gguf(&g).unwrap_err());
    assert!(
        e.contains("none.gguf: missing metadata key `tokenizer.ggml.model`"),
        "{e}"
    );
}

#[test]
fn vocab_merges_and_tokenizer_json_constructors() {
    let dir = tempfile::tempdir().unwrap();
    let (mut tokens, _) = small_vocab();
    tokens.truncate(256 + MERGES.len());
    tokens.push("<|endoftext|>".into());
    let vocab: serde_json::Map<String, serde_json::Value> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), serde_json::Value::from(i)))
        .collect();
    let vp = dir.path().join("vocab.json");
    let mp = dir.path().join("merges.txt");
    std::fs::write(&vp, serde_json::to_string(&vocab).unwrap()).unwrap();
    std::fs::write(&mp, format!("#version: 0.2\n{}\n", MERGES.join("\n"))).unwrap();
    let tok = Tokenizer::from_vocab_merges(&vp, &mp).unwrap();
    let eot = tok.token_to_id("<|endoftext|>").unwrap();
    assert_eq!((tok.bos_id(), tok.eos_id()), (Some(eot), Some(eot)));
    assert_eq!(tok.merges().len(), MERGES.len());
    let from_gguf = Tokenizer::from_gguf(&small_gguf(Some("gpt2"))).unwrap();
    for text in TRICKY {
        let ids = tok.encode(text).unwrap();
        assert_eq!(tok.decode(&ids).unwrap(), *text);
        // same vocabulary and merges as the GGUF one, so same ids (except the specials missing here)
        if !text.contains("<|im") {
            assert_eq!(ids, from_gguf.encode(text).unwrap(), "{text:?}");
        }
    }
    assert_eq!(tok.encode("x<|endoftext|>").unwrap().last(), Some(&eot));

    // tokenizer.json written from it loads back with the same merges and ids
    let tj = dir.path().join("tokenizer.json");
    std::fs::write(&tj, tok.inner().to_string(true).unwrap()).unwrap();
    let tok2 = Tokenizer::from_file(&tj).unwrap();
    assert_eq!(tok2.merges(), tok.merges());
    assert_eq!(tok2.merge_token_ids(), tok.merge_token_ids());
    assert_eq!(tok2.eos_id(), Some(eot));
    for text in TRICKY {
        assert_eq!(tok2.encode(text).unwrap(), tok.encode(text).unwrap());
    }

    // bad files name themselves
    std::fs::write(&mp, "#version: 0.2\nnospace\n").unwrap();
    let e = format!("{:#}", Tokenizer::from_vocab_merges(&vp, &mp).unwrap_err());
    assert!(e.contains("merges.txt") && e.contains("line 2"), "{e}");
    let e = format!(
        "{:#}",
        Tokenizer::from_file(dir.path().join("missing.json")).unwrap_err()
    );
    assert!(e.contains("missing.json"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// real tokenizers (asset cache) and golden ids (tests/golden/tokenizers)

/// All paths under the cache, or None when one is missing and HEADROOM_SKIP_ASSET_TESTS=1.
fn assets(rels: &[&str]) -> Option<Vec<PathBuf>> {
    rels.iter().map(|r| common::cached_asset(r)).collect()
}

/// Golden texts and reference ids, if the golden file exists.
fn golden(name: &str) -> Option<(Vec<String>, Vec<Vec<u32>>)> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden/tokenizers")
        .join(format!("{name}.json"));
    // Committed golden files are never optional.
    assert!(p.is_file(), "{} is missing (written by tools/make_golden.py, committed)", p.display());
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    let texts: Vec<String> = serde_json::from_value(v["texts"].clone()).expect("golden texts");
    let ids: Vec<Vec<u32>> = serde_json::from_value(v["ids"].clone()).expect("golden ids");
    assert_eq!(texts.len(), ids.len(), "{}", p.display());
    Some((texts, ids))
}

fn check_parity(name: &str, tok: &Tokenizer) {
    let Some((texts, ids)) = golden(name) else {
        return;
    };
    let mut bad = Vec::new();
    for (t, want) in texts.iter().zip(&ids) {
        let got = tok.encode(t).unwrap();
        if &got != want {
            bad.push(format!("{t:?}: got {got:?}, transformers {want:?}"));
        }
    }
    assert!(
        bad.is_empty(),
        "{name}: {} of {} texts differ:\n{}",
        bad.len(),
        texts.len(),
        bad.join("\n")
    );
    eprintln!("{name}: {} golden texts match", texts.len());
}

/// decode(encode(t)) == t; `nfc`: the tokenizer normalizes to NFC (NeoX), so compare composed.
fn round_trips(tok: &Tokenizer, nfc: bool) {
    for text in TRICKY {
        let ids = tok.encode(text).unwrap();
        let want = if nfc {
            text.replace("e\u{301}", "é")
        } else {
            text.to_string()
        };
        assert_eq!(tok.decode(&ids).unwrap(), want, "{}", tok.origin());
    }
}

#[test]
fn real_gpt2() {
    let Some(p) = assets(&["test-assets/gpt2/vocab.json", "test-assets/gpt2/merges.txt"]) else {
        return;
    };
    let tok = Tokenizer::from_vocab_merges(&p[0], &p[1]).unwrap();
    assert_eq!(tok.vocab_size(), 50257);
    assert_eq!(tok.merges().len(), 50000);
    assert_eq!(tok.encode("Hello world").unwrap(), vec![15496, 995]);
    assert_eq!(tok.encode(" the").unwrap(), vec![262]);
    assert_eq!(tok.eos_id(), Some(50256));
    assert_eq!(tok.encode("a<|endoftext|>").unwrap(), vec![64, 50256]);
    assert_eq!(tok.merges()[0], ("Ġ".to_string(), "t".to_string()));
    assert_eq!(tok.merge_token_ids()[0], tok.token_to_id("Ġt").unwrap());
    round_trips(&tok, false);
    check_parity("gpt2", &tok);
}

#[test]
fn real_neox() {
    let Some(p) = assets(&["test-assets/neox/tokenizer.json"]) else {
        return;
    };
    let tok = Tokenizer::from_file(&p[0]).unwrap();
    assert!(tok.vocab_size() >= 50277, "{}", tok.vocab_size());
    assert_eq!(tok.token_to_id("<|endoftext|>"), Some(0));
    assert_eq!(tok.eos_id(), Some(0));
    assert_eq!(tok.merges().len(), tok.merge_token_ids().len());
    assert!(tok.merges().len() > 49_000);
    round_trips(&tok, true);
    check_parity("neox", &tok);
}

#[test]
fn real_smollm2_gguf_tokenizer() {
    let Some(p) = assets(&["models/SmolLM2-135M-Instruct.Q4_1.gguf"]) else {
        return;
    };
    let g = GgufFile::open(&p[0]).unwrap();
    let tok = Tokenizer::from_gguf(&g).unwrap();
    assert_eq!(tok.vocab_size(), 49152);
    assert_eq!(tok.merges().len(), 48900);
    assert_eq!(tok.bos_id(), Some(1));
    assert_eq!(tok.eos_id(), Some(2));
    assert_eq!(tok.unk_id(), Some(0));
    assert_eq!(tok.id_to_token(1).as_deref(), Some("<|im_start|>"));
    assert_eq!(tok.id_to_token(2).as_deref(), Some("<|im_end|>"));
    assert_eq!(tok.id_to_token(0).as_deref(), Some("<|endoftext|>"));
    assert!(!tok.add_bos());
    assert_eq!(tok.encode("<|im_start|>").unwrap(), vec![1]);
    // digits one by one
    for i in tok.encode("In 2024, 1234567 people").unwrap() {
        let t = tok.id_to_token(i).unwrap();
        assert!(
            t.chars().filter(|c| c.is_ascii_digit()).count() <= 1,
            "{t:?}"
        );
    }
    let ids = tok.encode("The capital of France is Paris.").unwrap();
    assert!(ids.len() <= 8, "{ids:?}");
    let mids = tok.merge_token_ids();
    for (r, (a, b)) in tok.merges().iter().enumerate().step_by(997) {
        assert_eq!(tok.id_to_token(mids[r]).unwrap(), format!("{a}{b}"));
    }
    round_trips(&tok, false);
    check_parity("smollm2", &tok);
}
