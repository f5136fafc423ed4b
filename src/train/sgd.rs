//! SGD with momentum and weight decay, exactly `torch.optim.SGD` (no dampening, no
//! Nesterov): for each parameter p with gradient g,
//! `d = g + wd·p`; `buf = d` at its first step, else `buf = momentum·buf + d`; `p −= lr·buf`.
//! A parameter without a gradient is left alone (its buffer too), as in PyTorch.

use candle_core::backprop::GradStore;
use candle_core::{Result, Tensor, Var};

pub struct Sgd {
    params: Vec<(String, Var)>,
    /// Momentum buffers, by parameter; `None` until the parameter's first step.
    buffers: Vec<Option<Tensor>>,
    pub lr: f64,
    pub momentum: f64,
    pub weight_decay: f64,
}

impl Sgd {
    pub fn new(params: Vec<(String, Var)>, lr: f64, momentum: f64, weight_decay: f64) -> Sgd {
        let buffers = vec![None; params.len()];
        Sgd { params, buffers, lr, momentum, weight_decay }
    }

    /// One update from the gradients of a backward pass.
    pub fn step(&mut self, grads: &GradStore) -> Result<()> {
        for ((_, p), buf) in self.params.iter().zip(&mut self.buffers) {
            let Some(g) = grads.get(p.as_tensor()) else { continue };
            let mut d = g.clone();
            if self.weight_decay != 0.0 {
                d = (d + p.as_tensor().affine(self.weight_decay, 0.0)?)?;
            }
            if self.momentum != 0.0 {
                let b = match buf.take() {
                    None => d,
                    Some(b) => (b.affine(self.momentum, 0.0)? + d)?,
                };
                *buf = Some(b.detach());
                d = b;
            }
            p.set(&(p.as_tensor() - d.affine(self.lr, 0.0)?)?.detach())?;
        }
        Ok(())
    }

    /// The momentum buffers that exist, by parameter name (for checkpoints).
    pub fn state(&self) -> Vec<(String, Tensor)> {
        self.params.iter().zip(&self.buffers).filter_map(|((n, _), b)| b.as_ref().map(|b| (n.clone(), b.clone()))).collect()
    }

    /// Restores momentum buffers saved by [`Sgd::state`]; unknown names are an error.
    pub fn load_state(&mut self, state: Vec<(String, Tensor)>) -> std::result::Result<(), String> {
        for (name, t) in state {
            let Some(k) = self.params.iter().position(|(n, _)| *n == name) else {
                return Err(format!("the checkpoint has a momentum buffer for `{name}`, which the model does not have"));
            };
            if t.dims() != self.params[k].1.as_tensor().dims() {
                return Err(format!(
                    "momentum buffer `{name}` has shape {:?}, the parameter {:?}",
                    t.dims(),
                    self.params[k].1.as_tensor().dims()
                ));
            }
            self.buffers[k] = Some(t);
        }
        Ok(())
    }
}
