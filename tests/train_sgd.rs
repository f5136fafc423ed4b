//! SGD with momentum and weight decay against steps computed by hand with
//! `torch.optim.SGD`'s rule: d = g + wd·p; buf = d (first step) else momentum·buf + d;
//! p −= lr·buf.

use candle_core::{Device, Tensor, Var};
use cnnc::train::sgd::Sgd;

/// loss = Σ c_i p_i², so g = 2 c p.
fn step(opt: &mut Sgd, p: &Var, c: &Tensor) {
    let loss = (p.as_tensor().sqr().unwrap() * c).unwrap().sum_all().unwrap();
    opt.step(&loss.backward().unwrap()).unwrap();
}

#[test]
fn three_steps_match_hand_computation() {
    let (lr, mom, wd) = (0.1, 0.9, 0.01);
    let p = Var::from_tensor(&Tensor::new(&[1.0f64, -2.0], &Device::Cpu).unwrap()).unwrap();
    let c = Tensor::new(&[0.5f64, 1.5], &Device::Cpu).unwrap();
    let mut opt = Sgd::new(vec![("p".into(), p.clone())], lr, mom, wd);
    // By hand, element by element.
    let cs = [0.5, 1.5];
    let mut ps = [1.0f64, -2.0];
    let mut buf = [0.0f64; 2];
    for k in 0..3 {
        step(&mut opt, &p, &c);
        for i in 0..2 {
            let d = 2.0 * cs[i] * ps[i] + wd * ps[i];
            buf[i] = if k == 0 { d } else { mom * buf[i] + d };
            ps[i] -= lr * buf[i];
        }
        let got = p.as_tensor().to_vec1::<f64>().unwrap();
        for i in 0..2 {
            assert!((got[i] - ps[i]).abs() < 1e-14, "step {k}, element {i}: {} vs {}", got[i], ps[i]);
        }
    }
    // First step, written out: p0 = 1, g = 1, d = 1.01, p1 = 1 − 0.101 = 0.899.
    let mut opt = Sgd::new(vec![("q".into(), Var::new(&[1.0f64], &Device::Cpu).unwrap())], lr, mom, wd);
    let q = opt.state();
    assert!(q.is_empty(), "no buffer before the first step");
    let v = Var::new(&[1.0f64], &Device::Cpu).unwrap();
    opt = Sgd::new(vec![("q".into(), v.clone())], lr, mom, wd);
    step(&mut opt, &v, &Tensor::new(&[0.5f64], &Device::Cpu).unwrap());
    assert!((v.as_tensor().to_vec1::<f64>().unwrap()[0] - 0.899).abs() < 1e-15);
    assert_eq!(opt.state().len(), 1);
}

#[test]
fn plain_sgd_without_momentum_and_a_parameter_without_gradient() {
    let p = Var::new(&[3.0f64], &Device::Cpu).unwrap();
    let unused = Var::new(&[7.0f64], &Device::Cpu).unwrap();
    let mut opt = Sgd::new(vec![("p".into(), p.clone()), ("unused".into(), unused.clone())], 0.25, 0.0, 0.0);
    step(&mut opt, &p, &Tensor::new(&[1.0f64], &Device::Cpu).unwrap());
    // g = 2·3 = 6, p = 3 − 0.25·6 = 1.5; the unused parameter (no gradient) is untouched,
    // as in PyTorch.
    assert_eq!(p.as_tensor().to_vec1::<f64>().unwrap(), [1.5]);
    assert_eq!(unused.as_tensor().to_vec1::<f64>().unwrap(), [7.0]);
    assert!(opt.state().is_empty());
}

#[test]
fn restored_momentum_continues_like_an_uninterrupted_run() {
    let c = Tensor::new(&[0.3f64, 2.0], &Device::Cpu).unwrap();
    let a = Var::new(&[1.0f64, 1.0], &Device::Cpu).unwrap();
    let mut oa = Sgd::new(vec![("w".into(), a.clone())], 0.05, 0.9, 1e-4);
    for _ in 0..4 {
        step(&mut oa, &a, &c);
    }
    let b = Var::new(&[1.0f64, 1.0], &Device::Cpu).unwrap();
    let mut ob = Sgd::new(vec![("w".into(), b.clone())], 0.05, 0.9, 1e-4);
    for _ in 0..2 {
        step(&mut ob, &b, &c);
    }
    let saved = ob.state();
    let b2 = Var::from_tensor(b.as_tensor()).unwrap();
    let mut ob2 = Sgd::new(vec![("w".into(), b2.clone())], 0.05, 0.9, 1e-4);
    ob2.load_state(saved).unwrap();
    for _ in 0..2 {
        step(&mut ob2, &b2, &c);
    }
    assert_eq!(a.as_tensor().to_vec1::<f64>().unwrap(), b2.as_tensor().to_vec1::<f64>().unwrap());
    let err = ob2.load_state(vec![("nope".into(), c.clone())]).unwrap_err();
    assert!(err.contains("`nope`"), "{err}");
}
