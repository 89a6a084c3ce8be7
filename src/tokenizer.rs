//! Tokenizers: a thin layer over the `tokenizers` crate that also keeps what the analyses need
//! and the crate does not expose: the BPE merges in rank order, and bos/eos ids.
//!
//! Three sources:
//! - `tokenizer.json` ([`Tokenizer::from_file`]);
//! - GPT-2/OPT-style `vocab.json` + `merges.txt` ([`Tokenizer::from_vocab_merges`]): byte-level
//!   BPE with the GPT-2 regex, as `GPT2TokenizerFast` builds it;
//! - GGUF metadata with `tokenizer.ggml.model == "gpt2"` ([`Tokenizer::from_gguf`]), with the
//!   pre-tokenizer chosen by `tokenizer.ggml.pre` the way llama.cpp does (its regexes are the
//!   ones in the models' own tokenizer.json files), or `"llama"` (SentencePiece BPE with scores
//!   and byte fallback, [`Tokenizer::from_gguf_spm`]).
//!
//! `encode` never adds special tokens (the evaluation adds none); special tokens written in the
//! text are still matched as single tokens.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::unicode::NFC;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{AddedToken, SplitDelimiterBehavior};

use crate::formats::gguf::GgufFile;

/// Llama-3's pre-tokenizer regex (tokenizer.json of Meta-Llama-3; llama.cpp `llama-bpe`).
pub const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's pre-tokenizer regex (tokenizer.json of Qwen2; llama.cpp `qwen2`): digits one by one.
pub const QWEN2_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Values of `tokenizer.ggml.pre` that [`Tokenizer::from_gguf`] understands.
pub const SUPPORTED_GGUF_PRE: &[&str] =
    &["default", "gpt2", "smollm", "llama-bpe", "llama3", "qwen2"];

/// Special tokens recognised by name in vocab.json-based tokenizers.
const KNOWN_SPECIALS: &[&str] = &["<|endoftext|>", "</s>", "<s>", "<pad>", "<unk>"];

/// GGUF `tokenizer.ggml.token_type` values (llama.cpp `llama_token_type`).
const TOKEN_TYPE_UNKNOWN: i64 = 2;
const TOKEN_TYPE_CONTROL: i64 = 3;
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    merges: Vec<(String, String)>,
    merge_ids: Vec<u32>,
    bos: Option<u32>,
    eos: Option<u32>,
    unk: Option<u32>,
    pad: Option<u32>,
    add_bos: bool,
    origin: String,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("origin", &self.origin)
            .field("vocab_size", &self.vocab_size())
            .field("merges", &self.merges.len())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .finish()
    }
}

fn tk_err(e: tokenizers::Error) -> anyhow::Error {
    anyhow!("{e}")
}

fn byte_level_gpt2() -> ByteLevel {
    // GPT-2: no prefix space, GPT-2 regex, offsets trimmed (as GPT2TokenizerFast).
    ByteLevel::new(false, true, true)
}

impl Tokenizer {
    /// The tokenizer that belongs to a model path: the GGUF's own metadata for a `.gguf` file;
    /// for a Hugging Face folder its `tokenizer.json`, else `vocab.json` + `merges.txt`.
    pub fn for_model(model: &Path) -> Result<Tokenizer> {
        if model.is_file() {
            return Tokenizer::from_gguf(&GgufFile::open(model)?);
        }
        let json = model.join("tokenizer.json");
        if json.exists() {
            return Tokenizer::from_file(&json);
        }
        let (vocab, merges) = (model.join("vocab.json"), model.join("merges.txt"));
        if vocab.exists() && merges.exists() {
            return Tokenizer::from_vocab_merges(&vocab, &merges);
        }
        anyhow::bail!(
            "{}: no tokenizer.json, and no vocab.json + merges.txt: cannot build the model's tokenizer",
            model.display()
        )
    }

    // ----- constructors -----

    /// Load a HF `tokenizer.json`. Merges come from its BPE model (empty for non-BPE models).
    /// bos/eos come from a `tokenizer_config.json` next to it if there is one, else from the
    /// usual special-token names in the vocabulary.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Tokenizer> {
        let path = path.as_ref();
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("{p}: cannot read tokenizer.json"))?;
        let inner = tokenizers::Tokenizer::from_bytes(text.as_bytes())
            .map_err(|e| anyhow!("{p}: cannot load tokenizer: {e}"))?;
        let json: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("{p}: not valid JSON"))?;
        let merges = match json.pointer("/model/merges") {
            None | Some(serde_json::Value::Null) => Vec::new(),
            Some(serde_json::Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, m)| {
                    parse_json_merge(m).ok_or_else(|| {
                        anyhow!("{p}: model.merges[{i}] is {m}; expected \"a b\" or [\"a\", \"b\"]")
                    })
                })
                .collect::<Result<Vec<_>>>()?,
            Some(other) => bail!(
                "{p}: model.merges is {}; expected an array",
                short_json(other)
            ),
        };
        let mut tok = Tokenizer::assemble(inner, merges, p.clone())?;
        let cfg = path.with_file_name("tokenizer_config.json");
        let (mut bos, mut eos) = (None, None);
        if cfg.is_file() {
            let c: serde_json::Value = serde_json::from_str(
                &std::fs::read_to_string(&cfg)
                    .with_context(|| format!("{}: cannot read", cfg.display()))?,
            )
            .with_context(|| format!("{}: not valid JSON", cfg.display()))?;
            bos = config_token(&c, "bos_token").and_then(|t| tok.token_to_id(&t));
            eos = config_token(&c, "eos_token").and_then(|t| tok.token_to_id(&t));
            tok.unk = config_token(&c, "unk_token").and_then(|t| tok.token_to_id(&t));
            tok.pad = config_token(&c, "pad_token").and_then(|t| tok.token_to_id(&t));
        }
        tok.bos = bos.or_else(|| tok.first_present(&["<|begin_of_text|>", "<s>", "<|endoftext|>"]));
        tok.eos = eos.or_else(|| tok.first_present(&["<|end_of_text|>", "</s>", "<|endoftext|>"]));
        Ok(tok)
    }

    /// GPT-2/OPT-style folder files: `vocab.json` (token -> id) and `merges.txt` (one "a b" per
    /// line, optional `#version` header). Byte-level BPE, GPT-2 regex, no prefix space.
    /// `<|endoftext|>`, `</s>`, `<s>`, `<pad>`, `<unk>` present in the vocabulary become special
    /// tokens; bos/eos = `<|endoftext|>` (GPT-2) or `<s>`/`</s>` (OPT: both `</s>`, see
    /// [`Tokenizer::set_bos_eos`] to override).
    pub fn from_vocab_merges(
        vocab_json: impl AsRef<Path>,
        merges_txt: impl AsRef<Path>,
    ) -> Result<Tokenizer> {
        let (vp, mp) = (vocab_json.as_ref(), merges_txt.as_ref());
        let vs = vp.display().to_string();
        let ms = mp.display().to_string();
        let vocab: HashMap<String, u32> = serde_json::from_str(
            &std::fs::read_to_string(vp)
                .with_context(|| format!("{vs}: cannot read vocab.json"))?,
        )
        .with_context(|| format!("{vs}: expected a JSON object of token -> id"))?;
        let text =
            std::fs::read_to_string(mp).with_context(|| format!("{ms}: cannot read merges.txt"))?;
        let mut merges = Vec::new();
        for (i, line) in text.lines().enumerate() {
            if (i == 0 && line.starts_with("#version")) || line.trim().is_empty() {
                continue;
            }
            let (a, b) = line
                .split_once(' ')
                .ok_or_else(|| anyhow!("{ms}: line {}: {line:?} is not \"a b\"", i + 1))?;
            merges.push((a.to_string(), b.to_string()));
        }
        let origin = format!("{vs} + {ms}");
        let bpe = build_bpe(&vocab, &merges, false).with_context(|| origin.clone())?;
        let mut inner = tokenizers::Tokenizer::new(bpe);
        inner.with_pre_tokenizer(Some(byte_level_gpt2()));
        inner.with_decoder(Some(ByteLevelDecoder::default()));
        let specials: Vec<AddedToken> = KNOWN_SPECIALS
            .iter()
            .filter(|s| vocab.contains_key(**s))
            .map(|s| AddedToken::from(*s, true))
            .collect();
        inner.add_special_tokens(specials).map_err(tk_err)?;
        let mut tok = Tokenizer::assemble(inner, merges, origin)?;
        if let Some(id) = tok.token_to_id("<|endoftext|>") {
            tok.bos = Some(id);
            tok.eos = Some(id);
        } else {
            // OPT: bos_token = eos_token = "</s>" in its tokenizer_config.json.
            tok.eos = tok.token_to_id("</s>");
            tok.bos = tok.eos.or_else(|| tok.token_to_id("<s>"));
        }
        tok.unk = tok.token_to_id("<unk>");
        tok.pad = tok.token_to_id("<pad>");
        Ok(tok)
    }

    /// Build from GGUF metadata (`tokenizer.ggml.*`), for `tokenizer.ggml.model == "gpt2"`.
    pub fn from_gguf(gguf: &GgufFile) -> Result<Tokenizer> {
        let p = gguf.path().display().to_string();
        let model = gguf.get_str("tokenizer.ggml.model")?;
        match model {
            "gpt2" => {}
            "llama" => return Tokenizer::from_gguf_spm(gguf),
            other => bail!(
                "{p}: tokenizer.ggml.model = {other:?} is not supported; supported: \"gpt2\" (byte-level BPE), \"llama\" (SentencePiece BPE)"
            ),
        }
        let pre = match gguf.get("tokenizer.ggml.pre") {
            None => "default",
            Some(_) => gguf.get_str("tokenizer.ggml.pre")?,
        };
        let tokens = gguf.get_str_array("tokenizer.ggml.tokens")?;
        let merges: Vec<(String, String)> = gguf
            .get_str_array("tokenizer.ggml.merges")?
            .iter()
            .enumerate()
            .map(|(i, m)| {
                m.split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .ok_or_else(|| {
                        anyhow!("{p}: tokenizer.ggml.merges[{i}] = {m:?} is not \"a b\"")
                    })
            })
            .collect::<Result<_>>()?;
        let types = match gguf.get("tokenizer.ggml.token_type") {
            None => None,
            Some(_) => {
                let t = gguf.get_i64_array("tokenizer.ggml.token_type")?;
                if t.len() != tokens.len() {
                    bail!(
                        "{p}: tokenizer.ggml.token_type has {} entries but tokenizer.ggml.tokens has {}",
                        t.len(),
                        tokens.len()
                    );
                }
                Some(t)
            }
        };
        if tokens.len() > u32::MAX as usize {
            bail!("{p}: {} tokens do not fit u32 ids", tokens.len());
        }
        let mut vocab: HashMap<String, u32> = HashMap::with_capacity(tokens.len());
        for (i, t) in tokens.iter().enumerate() {
            vocab.entry(t.clone()).or_insert(i as u32);
        }
        let (pre_tok, nfc, ignore_merges): (PreTokenizerWrapper, bool, bool) = match pre {
            "default" | "gpt2" => (byte_level_gpt2().into(), false, false),
            "smollm" => (
                Sequence::new(vec![Digits::new(true).into(), byte_level_gpt2().into()]).into(),
                false,
                false,
            ),
            // Llama-3 merges are ignored when a whole pre-token is in the vocabulary (HF
            // `ignore_merges: true`, llama.cpp `ignore_merges` for LLAMA3).
            "llama-bpe" | "llama3" => (split_then_bytes(LLAMA3_REGEX)?, false, true),
            "qwen2" => (split_then_bytes(QWEN2_REGEX)?, true, false),
            other => bail!(
                "{p}: tokenizer.ggml.pre = {other:?} is not supported; supported: {}",
                SUPPORTED_GGUF_PRE.join(", ")
            ),
        };
        let bpe = build_bpe(&vocab, &merges, ignore_merges)
            .with_context(|| format!("{p}: GGUF tokenizer"))?;
        let mut inner = tokenizers::Tokenizer::new(bpe);
        if nfc {
            inner.with_normalizer(Some(NFC)).map_err(tk_err)?;
        }
        inner.with_pre_tokenizer(Some(pre_tok));
        inner.with_decoder(Some(ByteLevelDecoder::default()));
        if let Some(types) = &types {
            add_gguf_added_tokens(&mut inner, tokens, types)?;
        }
        let mut tok = Tokenizer::assemble(inner, merges, p.clone())?;
        let id = |key: &str| gguf_token_id(gguf, key, tokens.len(), &p);
        tok.bos = id("tokenizer.ggml.bos_token_id")?;
        tok.eos = id("tokenizer.ggml.eos_token_id")?;
        tok.unk = id("tokenizer.ggml.unknown_token_id")?;
        tok.pad = id("tokenizer.ggml.padding_token_id")?;
        tok.add_bos = match gguf.get("tokenizer.ggml.add_bos_token") {
            None => false,
            Some(_) => gguf.get_bool("tokenizer.ggml.add_bos_token")?,
        };
        Ok(tok)
    }

    /// SentencePiece-BPE vocabularies (`tokenizer.ggml.model = "llama"`: Llama-1/2, Mistral-v0.1,
    /// TinyLlama, ...), built the way transformers' LlamaTokenizerFast converts them and llama.cpp
    /// tokenizes them: the text gets a `▁` prefix (unless `tokenizer.ggml.add_space_prefix` is
    /// false) and every space becomes `▁`; pieces are merged by BPE whose merge order is the
    /// score (`tokenizer.ggml.scores`) of the merged piece, highest first, which is llama.cpp's
    /// "merge the adjacent pair whose union scores best"; characters with no piece fall back to
    /// their UTF-8 bytes `<0xXX>` (byte tokens), else to `<unk>`. Control and user-defined
    /// tokens (token_type 3 and 4) are matched whole in the text.
    pub fn from_gguf_spm(gguf: &GgufFile) -> Result<Tokenizer> {
        use tokenizers::decoders::byte_fallback::ByteFallback;
        use tokenizers::decoders::fuse::Fuse;
        use tokenizers::decoders::sequence::Sequence as DecoderSequence;
        use tokenizers::decoders::strip::Strip;
        use tokenizers::decoders::DecoderWrapper;
        use tokenizers::normalizers::{Prepend, Replace, Sequence as NormalizerSequence};

        let p = gguf.path().display().to_string();
        let tokens = gguf.get_str_array("tokenizer.ggml.tokens")?;
        if tokens.is_empty() || tokens.len() > u32::MAX as usize {
            bail!("{p}: tokenizer.ggml.tokens has {} entries", tokens.len());
        }
        let scores = gguf.get_f32_array("tokenizer.ggml.scores").with_context(|| {
            format!("{p}: a SentencePiece (tokenizer.ggml.model = \"llama\") vocabulary needs tokenizer.ggml.scores")
        })?;
        if scores.len() != tokens.len() {
            bail!("{p}: tokenizer.ggml.scores has {} entries but tokenizer.ggml.tokens has {}", scores.len(), tokens.len());
        }
        if let Some(i) = scores.iter().position(|s| !s.is_finite()) {
            bail!("{p}: tokenizer.ggml.scores[{i}] = {} is not a finite number", scores[i]);
        }
        let types = match gguf.get("tokenizer.ggml.token_type") {
            None => vec![1; tokens.len()],
            Some(_) => {
                let t = gguf.get_i64_array("tokenizer.ggml.token_type")?;
                if t.len() != tokens.len() {
                    bail!("{p}: tokenizer.ggml.token_type has {} entries but tokenizer.ggml.tokens has {}", t.len(), tokens.len());
                }
                t
            }
        };
        let flag = |key: &str, default: bool| -> Result<bool> {
            match gguf.get(key) {
                None => Ok(default),
                Some(_) => gguf.get_bool(key),
            }
        };
        // llama.cpp's defaults for SPM vocabularies.
        let add_space_prefix = flag("tokenizer.ggml.add_space_prefix", true)?;
        if flag("tokenizer.ggml.remove_extra_whitespaces", false)? {
            bail!("{p}: tokenizer.ggml.remove_extra_whitespaces = true is not supported (it changes the token ids)");
        }
        if gguf.contains_key("tokenizer.ggml.precompiled_charsmap") {
            bail!("{p}: tokenizer.ggml.precompiled_charsmap (a SentencePiece normalization table) is not supported (it changes the token ids)");
        }
        let mut vocab: HashMap<String, u32> = HashMap::with_capacity(tokens.len());
        for (i, t) in tokens.iter().enumerate() {
            vocab.entry(t.clone()).or_insert(i as u32);
        }
        // Merges as transformers' SentencePieceExtractor makes them: every split of every piece
        // into two pieces (per piece ordered by the ids of the halves), all ordered by the
        // score of the piece they make, highest first (stable, so ties keep vocabulary order).
        let mut merges: Vec<(f32, String, String)> = Vec::new();
        for (i, t) in tokens.iter().enumerate() {
            if vocab.get(t) != Some(&(i as u32)) {
                continue; // a duplicate piece: the first id wins, as in the vocab map
            }
            let mut local: Vec<(u32, u32, &str, &str)> = Vec::new();
            for (k, _) in t.char_indices().skip(1) {
                let (l, r) = t.split_at(k);
                if let (Some(&il), Some(&ir)) = (vocab.get(l), vocab.get(r)) {
                    local.push((il, ir, l, r));
                }
            }
            local.sort_by_key(|x| (x.0, x.1));
            merges.extend(local.into_iter().map(|(_, _, l, r)| (scores[i], l.to_string(), r.to_string())));
        }
        merges.sort_by(|a, b| b.0.total_cmp(&a.0));
        let merges: Vec<(String, String)> = merges.into_iter().map(|(_, l, r)| (l, r)).collect();
        let unk_id = match gguf.get("tokenizer.ggml.unknown_token_id") {
            Some(_) => Some(gguf.get_u32("tokenizer.ggml.unknown_token_id")?),
            None => types.iter().position(|&t| t == TOKEN_TYPE_UNKNOWN).map(|i| i as u32),
        };
        let unk_tok = match unk_id {
            Some(u) => Some(tokens.get(u as usize).cloned().ok_or_else(|| {
                anyhow!("{p}: tokenizer.ggml.unknown_token_id = {u} is outside the vocabulary of {} tokens", tokens.len())
            })?),
            None => None,
        };
        let v: Vocab = vocab.iter().map(|(k, &i)| (k.clone(), i)).collect();
        let mut b = BPE::builder().vocab_and_merges(v, merges.clone()).fuse_unk(true).byte_fallback(true);
        if let Some(u) = &unk_tok {
            b = b.unk_token(u.clone());
        }
        let bpe = b.build().map_err(|e| anyhow!("{p}: cannot build the SentencePiece BPE model: {e}"))?;
        let mut inner = tokenizers::Tokenizer::new(bpe);
        let mut norm: Vec<tokenizers::NormalizerWrapper> = Vec::new();
        if add_space_prefix {
            norm.push(Prepend::new("\u{2581}".to_string()).into());
        }
        norm.push(Replace::new(" ", "\u{2581}").map_err(tk_err)?.into());
        inner.with_normalizer(Some(NormalizerSequence::new(norm))).map_err(tk_err)?;
        let mut dec: Vec<DecoderWrapper> = vec![
            DecoderWrapper::Replace(Replace::new("\u{2581}", " ").map_err(tk_err)?),
            ByteFallback::new().into(),
            Fuse::new().into(),
        ];
        if add_space_prefix {
            dec.push(Strip::new(' ', 1, 0).into());
        }
        inner.with_decoder(Some(DecoderSequence::new(dec)));
        add_gguf_added_tokens(&mut inner, tokens, &types)?;
        let mut tok = Tokenizer::assemble(inner, merges, p.clone())?;
        let id = |key: &str| gguf_token_id(gguf, key, tokens.len(), &p);
        tok.bos = id("tokenizer.ggml.bos_token_id")?;
        tok.eos = id("tokenizer.ggml.eos_token_id")?;
        tok.unk = unk_id;
        tok.pad = id("tokenizer.ggml.padding_token_id")?;
        // llama.cpp adds BOS for SPM vocabularies unless the file says otherwise.
        tok.add_bos = flag("tokenizer.ggml.add_bos_token", true)?;
        Ok(tok)
    }

    fn assemble(
        inner: tokenizers::Tokenizer,
        merges: Vec<(String, String)>,
        origin: String,
    ) -> Result<Tokenizer> {
        let merge_ids = merges
            .iter()
            .enumerate()
            .map(|(r, (a, b))| {
                let m = format!("{a}{b}");
                inner
                    .token_to_id(&m)
                    .ok_or_else(|| anyhow!("{origin}: merge #{r} ({a:?}, {b:?}) makes {m:?}, which is not in the vocabulary"))
            })
            .collect::<Result<Vec<u32>>>()?;
        Ok(Tokenizer {
            inner,
            merges,
            merge_ids,
            bos: None,
            eos: None,
            unk: None,
            pad: None,
            add_bos: false,
            origin,
        })
    }

    fn first_present(&self, names: &[&str]) -> Option<u32> {
        names.iter().find_map(|n| self.token_to_id(n))
    }

    // ----- use -----

    /// Token ids of `text`, without any added special tokens.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode_fast(text, false)
            .map_err(|e| anyhow!("{}: cannot encode {:?}: {e}", self.origin, preview(text)))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Text of `ids` (special tokens kept).
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        if let Some(bad) = ids.iter().find(|&&i| self.inner.id_to_token(i).is_none()) {
            bail!(
                "{}: cannot decode id {bad}: outside the vocabulary of {}",
                self.origin,
                self.vocab_size()
            );
        }
        self.inner
            .decode(ids, false)
            .map_err(tk_err)
            .with_context(|| format!("{}: decode", self.origin))
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }
    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }
    pub fn eos_id(&self) -> Option<u32> {
        self.eos
    }
    pub fn unk_id(&self) -> Option<u32> {
        self.unk
    }
    pub fn pad_id(&self) -> Option<u32> {
        self.pad
    }
    /// GGUF `tokenizer.ggml.add_bos_token` (false for other sources). Informational: `encode`
    /// never adds it.
    pub fn add_bos(&self) -> bool {
        self.add_bos
    }
    /// Writes this tokenizer as a Hugging Face folder's `tokenizer.json` (the `tokenizers` crate's
    /// own serialisation: the same model, normalizer, pre-tokenizer and decoder) and a
    /// `tokenizer_config.json` naming bos / eos / unk / pad, so [`Tokenizer::from_file`] reads
    /// back the same tokenizer (e.g. a GGUF's tokenizer for an HF checkpoint). Returns the file
    /// names written.
    pub fn save_hf(&self, dir: &Path) -> Result<Vec<&'static str>> {
        let json = dir.join("tokenizer.json");
        self.inner.save(&json, false).map_err(|e| anyhow!("cannot write {}: {e}", json.display()))?;
        let name = |id: Option<u32>| id.and_then(|i| self.id_to_token(i));
        let mut cfg = serde_json::Map::new();
        for (key, id) in [("bos_token", self.bos), ("eos_token", self.eos), ("unk_token", self.unk), ("pad_token", self.pad)] {
            if let Some(t) = name(id) {
                cfg.insert(key.into(), t.into());
            }
        }
        cfg.insert("add_bos_token".into(), self.add_bos.into());
        let cfg_path = dir.join("tokenizer_config.json");
        let text = serde_json::to_string_pretty(&serde_json::Value::Object(cfg))?;
        std::fs::write(&cfg_path, text).with_context(|| format!("cannot write {}", cfg_path.display()))?;
        Ok(vec!["tokenizer.json", "tokenizer_config.json"])
    }

    /// Override bos/eos (e.g. from a model's config.json).
    pub fn set_bos_eos(&mut self, bos: Option<u32>, eos: Option<u32>) {
        self.bos = bos;
        self.eos = eos;
    }
    /// BPE merges in rank order: rank r merges `a` and `b` into the token `a + b`.
    pub fn merges(&self) -> Vec<(String, String)> {
        self.merges.clone()
    }
    /// For each merge (rank order), the id of the token it makes.
    pub fn merge_token_ids(&self) -> Vec<u32> {
        self.merge_ids.clone()
    }
    /// Where it was loaded from.
    pub fn origin(&self) -> &str {
        &self.origin
    }
    /// The wrapped `tokenizers` tokenizer.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}

fn split_then_bytes(regex: &str) -> Result<PreTokenizerWrapper> {
    let split = Split::new(
        SplitPattern::Regex(regex.to_string()),
        SplitDelimiterBehavior::Isolated,
        false,
    )
    .map_err(|e| anyhow!("bad pre-tokenizer regex: {e}"))?;
    Ok(Sequence::new(vec![
        split.into(),
        ByteLevel::new(false, true, false).into(),
    ])
    .into())
}

fn build_bpe(
    vocab: &HashMap<String, u32>,
    merges: &[(String, String)],
    ignore_merges: bool,
) -> Result<BPE> {
    let v: Vocab = vocab.iter().map(|(k, &i)| (k.clone(), i)).collect();
    BPE::builder()
        .vocab_and_merges(v, merges.to_vec())
        .ignore_merges(ignore_merges)
        .build()
        .map_err(|e| anyhow!("cannot build the BPE model: {e}"))
}

fn parse_json_merge(m: &serde_json::Value) -> Option<(String, String)> {
    match m {
        serde_json::Value::String(s) => s
            .split_once(' ')
            .map(|(a, b)| (a.to_string(), b.to_string())),
        serde_json::Value::Array(p) if p.len() == 2 => {
            Some((p[0].as_str()?.to_string(), p[1].as_str()?.to_string()))
        }
        _ => None,
    }
}

fn config_token(cfg: &serde_json::Value, key: &str) -> Option<String> {
    match cfg.get(key)? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(o) => o.get("content")?.as_str().map(String::from),
        _ => None,
    }
}

fn short_json(v: &serde_json::Value) -> String {
    let s = v.to_string();
    if s.len() > 60 {
        format!(
            "{}...",
            &s[..s
                .char_indices()
                .take_while(|(i, _)| *i < 60)
                .last()
                .map_or(0, |(i, c)| i + c.len_utf8())]
        )
    } else {
        s
    }
}

fn preview(text: &str) -> String {
    text.chars().take(40).collect()
}

/// Control (type 3) and user-defined (type 4) tokens of a GGUF vocabulary are matched whole in
/// the text, as llama.cpp does; control tokens are special (skipped when decoding).
fn add_gguf_added_tokens(inner: &mut tokenizers::Tokenizer, tokens: &[String], types: &[i64]) -> Result<()> {
    let added: Vec<AddedToken> = tokens
        .iter()
        .zip(types)
        .filter(|(_, &t)| t == TOKEN_TYPE_CONTROL || t == TOKEN_TYPE_USER_DEFINED)
        .map(|(tok, &t)| AddedToken::from(tok.clone(), t == TOKEN_TYPE_CONTROL))
        .collect();
    let (special, normal): (Vec<_>, Vec<_>) = added.into_iter().partition(|a| a.special);
    inner.add_special_tokens(special).map_err(tk_err)?;
    inner.add_tokens(normal).map_err(tk_err)?;
    Ok(())
}

/// A token id stored in GGUF metadata (`tokenizer.ggml.bos_token_id`, ...), checked against the
/// vocabulary size; `None` when the key is absent.
fn gguf_token_id(gguf: &GgufFile, key: &str, n_vocab: usize, origin: &str) -> Result<Option<u32>> {
    if gguf.get(key).is_none() {
        return Ok(None);
    }
    let v = gguf.get_u32(key)?;
    if (v as usize) < n_vocab {
        Ok(Some(v))
    } else {
        bail!("{origin}: {key} = {v} is outside the vocabulary of {n_vocab} tokens")
    }
}
