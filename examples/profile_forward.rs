//! Profiling driver: repeated forward (and importance) passes of an OPT-125m-shaped random model.
use candle_core::Device;
use headroom::formats::hf::ConfigJson;
use headroom::model::weights::RandomWeights;
use headroom::model::{Layout, LoadOptions, Model, Target};
fn main() {
    let cfg = ConfigJson::from_value(serde_json::json!({"model_type": "opt", "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "ffn_dim": 3072, "vocab_size": 50272, "max_position_embeddings": 2048}), "opt");
    let opts = LoadOptions::resident_f32(&Device::Cpu);
    let m = Model::from_config(&cfg, std::sync::Arc::new(RandomWeights { std: 0.02 }), &Default::default(), &opts).unwrap();
    let seqs: Vec<Vec<u32>> = (0..4).map(|s| (0..256).map(|j| ((s * 7919 + j * 104729) % 50000) as u32).collect()).collect();
    let ids = m.batch_ids(&seqs).unwrap();
    let mode = std::env::args().nth(1).unwrap_or("forward".into());
    for _ in 0..3 {
        let t = std::time::Instant::now();
        if mode == "forward" { m.forward(&ids, None).unwrap(); } else {
            let targets: Vec<Target> = (0..4).map(|row| Target { row, start: 1, len: 255 }).collect();
            m.gate_gradients(&ids, &Layout::Causal, None, &targets).unwrap();
        }
        eprintln!("{mode}: {:.2}s", t.elapsed().as_secs_f64());
    }
}
