//! What generated crates link against at run time: a [`VarBuilder`] backend that draws
//! weights with cnnc's own generator.
//!
//! Contract: a model built through [`SeededVarMap::var_builder`] with seed `s` gets the
//! weights that `cnnc::nn::Model::new(…, s, …)` draws for the same plan, bit for bit,
//! provided the model asks for its tensors in the plan's order (weight of layer 1, its
//! bias, weight of layer 2, …), as generated models do. That holds because both use one
//! `StdRng` seeded by `s`, draw f64 samples of N(mean, std²) in PyTorch's memory order,
//! draw nothing for a zero std or a constant, and round to the dtype last.

use candle_core::{DType, Device, Result, Shape, Tensor, Var};
use candle_nn::{Init, VarBuilder, VarMap};
use rand::SeedableRng;
use rand_distr::Distribution;
use std::sync::{Arc, Mutex};

/// A [`VarMap`] whose new variables are drawn from one seeded generator.
#[derive(Clone)]
pub struct SeededVarMap {
    vars: VarMap,
    rng: Arc<Mutex<rand::rngs::StdRng>>,
}

impl SeededVarMap {
    pub fn new(seed: u64) -> SeededVarMap {
        SeededVarMap { vars: VarMap::new(), rng: Arc::new(Mutex::new(rand::rngs::StdRng::seed_from_u64(seed))) }
    }

    /// A builder whose `get_with_hints(shape, name, Init::Randn { mean, stdev })` draws
    /// from this map's generator the first time `name` is asked for.
    pub fn var_builder(&self, dtype: DType, device: &Device) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(self.clone()), dtype, device.clone())
    }

    /// The variables (for an optimizer, `save` and `load`).
    pub fn var_map(&self) -> &VarMap {
        &self.vars
    }

    /// The variable `name`, if the model asked for it.
    pub fn var(&self, name: &str) -> Option<Var> {
        self.vars.data().lock().ok()?.get(name).cloned()
    }

    fn draw(&self, shape: &Shape, init: Init) -> Result<Vec<f64>> {
        let n = shape.elem_count();
        let mut rng = self.rng.lock().map_err(|_| candle_core::Error::Msg("the weight generator's lock is poisoned".into()))?;
        Ok(match init {
            Init::Const(c) => vec![c; n],
            Init::Randn { stdev, .. } if stdev == 0.0 => vec![0.0; n],
            Init::Randn { mean, stdev } => {
                let d = rand_distr::Normal::new(mean, stdev).map_err(|e| candle_core::Error::Msg(format!("N({mean}, {stdev}²): {e}")))?;
                (0..n).map(|_| d.sample(&mut *rng)).collect()
            }
            Init::Uniform { lo, up } => {
                let d = rand_distr::Uniform::new(lo, up).map_err(|e| candle_core::Error::Msg(format!("U({lo}, {up}): {e}")))?;
                (0..n).map(|_| d.sample(&mut *rng)).collect()
            }
            Init::Kaiming { .. } => {
                return Err(candle_core::Error::Msg(
                    "SeededVarMap draws N(mean, std²), constants and uniforms; pass the std explicitly".into(),
                ))
            }
        })
    }
}

impl candle_nn::var_builder::SimpleBackend for SeededVarMap {
    fn get(&self, shape: Shape, name: &str, init: Init, dtype: DType, dev: &Device) -> Result<Tensor> {
        if let Some(v) = self.var(name) {
            if v.shape() != &shape {
                candle_core::bail!("variable `{name}` has shape {:?}, asked for {:?}", v.shape(), shape);
            }
            return Ok(v.as_tensor().clone());
        }
        let values = self.draw(&shape, init)?;
        let var = Var::from_tensor(&Tensor::from_vec(values, shape, dev)?.to_dtype(dtype)?)?;
        let t = var.as_tensor().clone();
        self.vars
            .data()
            .lock()
            .map_err(|_| candle_core::Error::Msg("the variable map's lock is poisoned".into()))?
            .insert(name.to_string(), var);
        Ok(t)
    }

    fn get_unchecked(&self, name: &str, _dtype: DType, _dev: &Device) -> Result<Tensor> {
        self.var(name).map(|v| v.as_tensor().clone()).ok_or_else(|| candle_core::Error::Msg(format!("no variable `{name}`")))
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.var(name).is_some()
    }
}
