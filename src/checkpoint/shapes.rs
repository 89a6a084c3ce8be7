//! The table of named shapes (published configs) and the tensors each family's checkpoint holds.

use anyhow::{bail, Result};

use super::{Init, TensorSpec};

/// The architecture a shape is written as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    /// `OPTForCausalLM`: LayerNorm, ReLU FFN, learned positions, biases everywhere.
    Opt,
    /// `LlamaForCausalLM`: RMSNorm, SwiGLU, RoPE, GQA, no biases.
    Llama,
    /// `Qwen2ForCausalLM`: Llama with q/k/v biases.
    Qwen2,
}

impl Arch {
    /// `model_type` / GGUF `general.architecture`.
    pub fn model_type(self) -> &'static str {
        match self {
            Arch::Opt => "opt",
            Arch::Llama => "llama",
            Arch::Qwen2 => "qwen2",
        }
    }
}

/// A model shape: every number that decides the tensors and the config.
#[derive(Clone, Debug, PartialEq)]
pub struct Shape {
    /// The table name it started from (`opt-125m`, ...).
    pub name: String,
    pub arch: Arch,
    pub layers: usize,
    pub hidden: usize,
    pub heads: usize,
    /// Key/value heads (GQA); equal to `heads` for OPT.
    pub kv_heads: usize,
    pub ffn: usize,
    pub vocab: usize,
    /// `max_position_embeddings` (OPT: learned positions, `context + 2` rows).
    pub context: usize,
    /// OPT: the embedding width E; `project_in` (E -> hidden) / `project_out` when E != hidden.
    pub word_embed_proj_dim: usize,
    /// OPT: pre-LN (false: OPT-350m's post-LN, which has no final LayerNorm).
    pub pre_ln: bool,
    /// Llama family: RoPE θ and RMSNorm ε.
    pub rope_theta: f64,
    pub rms_norm_eps: f64,
    /// Unembedding tied to the token embedding (no `lm_head.weight` / `output.weight`).
    pub tied: bool,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    /// OPT's `pad_token_id`.
    pub pad: Option<u32>,
}

/// Every name [`Shape::named`] knows.
pub const SHAPE_NAMES: &[&str] = &[
    "opt-125m", "opt-350m", "opt-1.3b", "opt-2.7b", "opt-6.7b", "opt-13b", "opt-30b", "opt-66b", "llama-3-8b",
    "llama-13b-shape", "qwen2-7b", "smollm2-135m",
];

/// Field overrides for a custom shape (a `None` keeps the named shape's value).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Overrides {
    pub layers: Option<usize>,
    pub hidden: Option<usize>,
    pub heads: Option<usize>,
    pub kv_heads: Option<usize>,
    pub ffn: Option<usize>,
    pub vocab: Option<usize>,
    pub context: Option<usize>,
}

impl Overrides {
    pub fn is_empty(&self) -> bool {
        *self == Overrides::default()
    }
}

/// Upper bounds on single dims: a row buffer is sized by a dim, a tensor list by the layer count.
const MAX_DIM: usize = 1 << 24;
const MAX_LAYERS: usize = 4096;

/// facebook/opt-*: (hidden, layers, heads, ffn); vocab 50272, 2048 positions, bos = eos = 2, pad 1.
fn opt(name: &str, hidden: usize, layers: usize, heads: usize, ffn: usize) -> Shape {
    Shape {
        name: name.into(),
        arch: Arch::Opt,
        layers,
        hidden,
        heads,
        kv_heads: heads,
        ffn,
        vocab: 50272,
        context: 2048,
        word_embed_proj_dim: hidden,
        pre_ln: true,
        rope_theta: 0.0,
        rms_norm_eps: 0.0,
        tied: true,
        bos: Some(2),
        eos: Some(2),
        pad: Some(1),
    }
}

#[allow(clippy::too_many_arguments)]
fn llama(
    name: &str,
    arch: Arch,
    (hidden, layers, heads, kv_heads, ffn, vocab, context): (usize, usize, usize, usize, usize, usize, usize),
    rope_theta: f64,
    rms_norm_eps: f64,
    tied: bool,
    bos: u32,
    eos: u32,
) -> Shape {
    Shape {
        name: name.into(),
        arch,
        layers,
        hidden,
        heads,
        kv_heads,
        ffn,
        vocab,
        context,
        word_embed_proj_dim: hidden,
        pre_ln: true,
        rope_theta,
        rms_norm_eps,
        tied,
        bos: Some(bos),
        eos: Some(eos),
        pad: None,
    }
}

impl Shape {
    /// A shape from the table, with the published config's numbers.
    pub fn named(name: &str) -> Result<Shape> {
        Ok(match name {
            "opt-125m" => opt(name, 768, 12, 12, 3072),
            // Post-LN, 512-wide embedding with project_in / project_out, no final LayerNorm.
            "opt-350m" => Shape { word_embed_proj_dim: 512, pre_ln: false, ..opt(name, 1024, 24, 16, 4096) },
            "opt-1.3b" => opt(name, 2048, 24, 32, 8192),
            "opt-2.7b" => opt(name, 2560, 32, 32, 10240),
            "opt-6.7b" => opt(name, 4096, 32, 32, 16384),
            "opt-13b" => opt(name, 5120, 40, 40, 20480),
            "opt-30b" => opt(name, 7168, 48, 56, 28672),
            "opt-66b" => opt(name, 9216, 64, 72, 36864),
            // meta-llama/Meta-Llama-3-8B.
            "llama-3-8b" => llama(name, Arch::Llama, (4096, 32, 32, 8, 14336, 128256, 8192), 500_000.0, 1e-5, false, 128000, 128001),
            // meta-llama/Llama-2-13b-hf's dimensions.
            "llama-13b-shape" => llama(name, Arch::Llama, (5120, 40, 40, 40, 13824, 32000, 4096), 10_000.0, 1e-5, false, 1, 2),
            // Qwen/Qwen2-7B (base).
            "qwen2-7b" => llama(name, Arch::Qwen2, (3584, 28, 28, 4, 18944, 152064, 131072), 1_000_000.0, 1e-6, false, 151643, 151643),
            // HuggingFaceTB/SmolLM2-135M.
            "smollm2-135m" => llama(name, Arch::Llama, (576, 30, 9, 3, 1536, 49152, 8192), 100_000.0, 1e-5, true, 0, 0),
            other => bail!("unknown shape `{other}`; known shapes: {}", SHAPE_NAMES.join(", ")),
        })
    }

    /// The shape with `o`'s fields replaced, checked. OPT's embedding width follows `hidden` when it
    /// was equal to it (pre-LN shapes); kv heads follow `heads` when they were equal (no GQA).
    pub fn with(mut self, o: &Overrides) -> Result<Shape> {
        if let Some(h) = o.hidden {
            if self.word_embed_proj_dim == self.hidden {
                self.word_embed_proj_dim = h;
            }
            self.hidden = h;
        }
        if let Some(h) = o.heads {
            if self.kv_heads == self.heads && o.kv_heads.is_none() {
                self.kv_heads = h;
            }
            self.heads = h;
        }
        if let Some(kv) = o.kv_heads {
            if self.arch == Arch::Opt && kv != self.heads {
                bail!("OPT has no grouped-query attention: --kv-heads must equal the number of heads ({})", self.heads);
            }
            self.kv_heads = kv;
        }
        self.layers = o.layers.unwrap_or(self.layers);
        self.ffn = o.ffn.unwrap_or(self.ffn);
        self.vocab = o.vocab.unwrap_or(self.vocab);
        self.context = o.context.unwrap_or(self.context);
        // Special-token ids outside a shrunk vocabulary would point nowhere.
        let fits = |id: Option<u32>| id.filter(|&i| (i as usize) < self.vocab);
        (self.bos, self.eos, self.pad) = (fits(self.bos), fits(self.eos), fits(self.pad));
        self.check()?;
        Ok(self)
    }

    /// Checks that the numbers make a model headroom (and transformers) can build.
    pub fn check(&self) -> Result<()> {
        let n = &self.name;
        for (what, v, max) in [
            ("layers", self.layers, MAX_LAYERS),
            ("hidden", self.hidden, MAX_DIM),
            ("heads", self.heads, MAX_DIM),
            ("kv heads", self.kv_heads, MAX_DIM),
            ("ffn", self.ffn, MAX_DIM),
            ("vocab", self.vocab, MAX_DIM),
            ("context", self.context, MAX_DIM),
            ("word_embed_proj_dim", self.word_embed_proj_dim, MAX_DIM),
        ] {
            if v == 0 || v > max {
                bail!("shape {n}: {what} is {v}; expected 1 to {max}");
            }
        }
        if !self.hidden.is_multiple_of(self.heads) {
            bail!("shape {n}: hidden {} is not a multiple of heads {}", self.hidden, self.heads);
        }
        if !self.heads.is_multiple_of(self.kv_heads) {
            bail!("shape {n}: heads {} is not a multiple of kv heads {}", self.heads, self.kv_heads);
        }
        if self.arch != Arch::Opt && !self.head_dim().is_multiple_of(2) {
            bail!("shape {n}: head dim {} (hidden / heads) must be even for rotary embeddings", self.head_dim());
        }
        Ok(())
    }

    pub fn head_dim(&self) -> usize {
        self.hidden / self.heads
    }

    /// The checkpoint's tensors with their Hugging Face names, in the order transformers' modules
    /// register them (the order `save_pretrained` fills shards in).
    pub fn tensors(&self) -> Vec<TensorSpec> {
        let t = |name: String, shape: Vec<usize>, init: Init| TensorSpec { name, shape, init };
        let (d, f, v, e) = (self.hidden, self.ffn, self.vocab, self.word_embed_proj_dim);
        let mut out = Vec::new();
        match self.arch {
            Arch::Opt => {
                let p = "model.decoder";
                // OPTDecoder: embed_tokens [V, E], embed_positions [ctx + 2, D] (offset 2),
                // project_out [E, D], project_in [D, E], final_layer_norm (pre-LN only), layers.
                out.push(t(format!("{p}.embed_tokens.weight"), vec![v, e], Init::Normal));
                out.push(t(format!("{p}.embed_positions.weight"), vec![self.context + 2, d], Init::Normal));
                if e != d {
                    out.push(t(format!("{p}.project_out.weight"), vec![e, d], Init::Normal));
                    out.push(t(format!("{p}.project_in.weight"), vec![d, e], Init::Normal));
                }
                if self.pre_ln {
                    out.push(t(format!("{p}.final_layer_norm.weight"), vec![d], Init::Ones));
                    out.push(t(format!("{p}.final_layer_norm.bias"), vec![d], Init::Zeros));
                }
                for l in 0..self.layers {
                    let lp = format!("{p}.layers.{l}");
                    // OPTAttention registers k, v, q, out; then the layer's LN, fc1, fc2, LN.
                    for proj in ["k_proj", "v_proj", "q_proj", "out_proj"] {
                        out.push(t(format!("{lp}.self_attn.{proj}.weight"), vec![d, d], Init::Normal));
                        out.push(t(format!("{lp}.self_attn.{proj}.bias"), vec![d], Init::Zeros));
                    }
                    out.push(t(format!("{lp}.self_attn_layer_norm.weight"), vec![d], Init::Ones));
                    out.push(t(format!("{lp}.self_attn_layer_norm.bias"), vec![d], Init::Zeros));
                    out.push(t(format!("{lp}.fc1.weight"), vec![f, d], Init::Normal));
                    out.push(t(format!("{lp}.fc1.bias"), vec![f], Init::Zeros));
                    out.push(t(format!("{lp}.fc2.weight"), vec![d, f], Init::Normal));
                    out.push(t(format!("{lp}.fc2.bias"), vec![d], Init::Zeros));
                    out.push(t(format!("{lp}.final_layer_norm.weight"), vec![d], Init::Ones));
                    out.push(t(format!("{lp}.final_layer_norm.bias"), vec![d], Init::Zeros));
                }
                if !self.tied {
                    out.push(t("lm_head.weight".into(), vec![v, e], Init::Normal));
                }
            }
            Arch::Llama | Arch::Qwen2 => {
                let (q, kv) = (self.heads * self.head_dim(), self.kv_heads * self.head_dim());
                let bias = self.arch == Arch::Qwen2;
                out.push(t("model.embed_tokens.weight".into(), vec![v, d], Init::Normal));
                for l in 0..self.layers {
                    let lp = format!("model.layers.{l}");
                    for (proj, rows) in [("q_proj", q), ("k_proj", kv), ("v_proj", kv)] {
                        out.push(t(format!("{lp}.self_attn.{proj}.weight"), vec![rows, d], Init::Normal));
                        if bias {
                            out.push(t(format!("{lp}.self_attn.{proj}.bias"), vec![rows], Init::Zeros));
                        }
                    }
                    out.push(t(format!("{lp}.self_attn.o_proj.weight"), vec![d, q], Init::Normal));
                    out.push(t(format!("{lp}.mlp.gate_proj.weight"), vec![f, d], Init::Normal));
                    out.push(t(format!("{lp}.mlp.up_proj.weight"), vec![f, d], Init::Normal));
                    out.push(t(format!("{lp}.mlp.down_proj.weight"), vec![d, f], Init::Normal));
                    out.push(t(format!("{lp}.input_layernorm.weight"), vec![d], Init::Ones));
                    out.push(t(format!("{lp}.post_attention_layernorm.weight"), vec![d], Init::Ones));
                }
                out.push(t("model.norm.weight".into(), vec![d], Init::Ones));
                if !self.tied {
                    out.push(t("lm_head.weight".into(), vec![v, d], Init::Normal));
                }
            }
        }
        out
    }

    /// Parameters of the checkpoint (a tied unembedding counted once), as `ModelInfo::n_params`.
    pub fn n_params(&self) -> u64 {
        self.tensors().iter().map(|t| t.numel() as u64).sum()
    }

    /// One line: `opt-1.3b (opt): 24 layers, hidden 2048, 32 heads, ...`.
    pub fn describe(&self) -> String {
        let mut s = format!(
            "{} ({}): {} layers, hidden {}, {} heads",
            self.name,
            self.arch.model_type(),
            self.layers,
            self.hidden,
            self.heads
        );
        if self.kv_heads != self.heads {
            s += &format!(" ({} kv)", self.kv_heads);
        }
        s += &format!(", ffn {}, vocab {}, context {}", self.ffn, self.vocab, self.context);
        if self.word_embed_proj_dim != self.hidden {
            s += &format!(", embedding {}", self.word_embed_proj_dim);
        }
        if self.arch == Arch::Opt && !self.pre_ln {
            s += ", post-LN";
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn published_parameter_counts() {
        // transformers 5.24 `num_parameters()` of each written config.json (built on the meta device).
        for (name, n) in [
            ("opt-125m", 125_239_296u64),
            ("opt-350m", 331_196_416),
            ("opt-1.3b", 1_315_758_080),
            ("opt-2.7b", 2_651_596_800),
            ("opt-6.7b", 6_658_473_984),
            ("opt-13b", 12_853_473_280),
            ("opt-30b", 29_974_540_288),
            ("opt-66b", 65_719_701_504),
            ("smollm2-135m", 134_515_008),
            ("llama-3-8b", 8_030_261_248),
            ("llama-13b-shape", 13_015_864_320),
            ("qwen2-7b", 7_615_616_512),
        ] {
            assert_eq!(Shape::named(name).unwrap().n_params(), n, "{name}");
        }
    }
}
