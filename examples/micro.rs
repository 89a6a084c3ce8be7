use candle_core::{Device, Tensor, D};
use std::time::Instant;
fn t<F: FnMut()>(name: &str, n: usize, flops: f64, mut f: F) {
    f();
    let s = Instant::now();
    for _ in 0..n { f(); }
    let dt = s.elapsed().as_secs_f64() / n as f64;
    println!("{name:40} {:8.2} ms  {:8.1} GFLOP/s", dt * 1e3, flops / dt / 1e9);
}
fn main() {
    let dev = Device::Cpu;
    let x = Tensor::randn(0f32, 1.0, (1024, 768), &dev).unwrap();
    let w = Tensor::randn(0f32, 1.0, (3072, 768), &dev).unwrap();
    let wt = w.t().unwrap().contiguous().unwrap();
    t("matmul x W^T (transposed view)", 5, 2.0*1024.0*768.0*3072.0, || { x.matmul(&w.t().unwrap()).unwrap(); });
    t("matmul x Wt (contiguous)", 5, 2.0*1024.0*768.0*3072.0, || { x.matmul(&wt).unwrap(); });
    let u = Tensor::randn(0f32, 1.0, (50272, 768), &dev).unwrap();
    t("unembed [1024,768]x[768,50272]", 2, 2.0*1024.0*768.0*50272.0, || { x.matmul(&u.t().unwrap()).unwrap(); });
    let h = Tensor::randn(0f32, 1.0, (1024, 3072), &dev).unwrap();
    t("relu [1024,3072]", 10, 0.0, || { h.relu().unwrap(); });
    t("gelu [1024,3072]", 10, 0.0, || { h.gelu().unwrap(); });
    t("add [1024,3072]", 10, 0.0, || { (&h + &h).unwrap(); });
    let s = Tensor::randn(0f32, 1.0, (4, 12, 256, 256), &dev).unwrap();
    t("softmax composed [4,12,256,256]", 5, 0.0, || {
        let m = s.max_keepdim(D::Minus1).unwrap(); let e = s.broadcast_sub(&m).unwrap().exp().unwrap();
        let z = e.sum_keepdim(D::Minus1).unwrap(); e.broadcast_div(&z).unwrap(); });
    let q = Tensor::randn(0f32, 1.0, (4, 12, 256, 64), &dev).unwrap();
    t("q k^T [4,12,256,64]", 5, 2.0*4.0*12.0*256.0*256.0*64.0, || { q.matmul(&q.t().unwrap()).unwrap(); });
    t("layernorm composed [1024,768]", 10, 0.0, || {
        let m = (x.sum_keepdim(D::Minus1).unwrap() / 768.0).unwrap(); let xc = x.broadcast_sub(&m).unwrap();
        let v = (xc.sqr().unwrap().sum_keepdim(D::Minus1).unwrap() / 768.0).unwrap();
        xc.broadcast_div(&(v + 1e-5).unwrap().sqrt().unwrap()).unwrap(); });
}
