//! A quantized model checked and ready to run: its steps, the walk that validated them
//! (every tensor's shape and domain) and the fast plan built from them.

use crate::error::Invalid;
use crate::model::Step;
use crate::model::validate::validate;
use crate::plan::{ConvAlgorithm, Plan};
use crate::walk::Walk;

/// A fully checked quantized model, with its execution plan prepared.
pub struct QuantizedModel {
    input_shape: Vec<usize>,
    steps: Vec<Step>,
    walk: Walk,
    plan: Plan,
}

impl std::fmt::Debug for QuantizedModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuantizedModel")
            .field("input_shape", &self.input_shape)
            .field("steps", &self.steps)
            .finish_non_exhaustive()
    }
}

impl PartialEq for QuantizedModel {
    fn eq(&self, other: &Self) -> bool {
        self.input_shape == other.input_shape && self.steps == other.steps
    }
}

impl QuantizedModel {
    /// Checks every rule of the format (shapes chain, domains match, codes on their
    /// grids, multipliers consistent with the scales, no int32 overflow possible) and
    /// prepares the fast plan ([`ConvAlgorithm::Auto`]).
    pub fn new(input_shape: Vec<usize>, steps: Vec<Step>) -> Result<Self, Invalid> {
        let walk = validate(&input_shape, &steps)?;
        let plan = Plan::build(&steps, &walk, ConvAlgorithm::Auto)?;
        Ok(Self {
            input_shape,
            steps,
            walk,
            plan,
        })
    }

    /// The same model with its plan computing 3×3 convolutions as `algorithm` says: for
    /// benchmarks and tests of one algorithm (the results are the same bit for bit).
    pub fn with_conv_algorithm(self, algorithm: ConvAlgorithm) -> Result<Self, Invalid> {
        let plan = Plan::build(&self.steps, &self.walk, algorithm)?;
        Ok(Self { plan, ..self })
    }

    /// Per-sample input shape.
    pub fn input_shape(&self) -> &[usize] {
        &self.input_shape
    }

    /// The steps in execution order.
    pub fn steps(&self) -> &[Step] {
        &self.steps
    }

    /// Per-sample output shape.
    pub fn output_shape(&self) -> &[usize] {
        &self.walk.last().shape
    }

    /// Every tensor's shape and domain.
    pub(crate) fn walk(&self) -> &Walk {
        &self.walk
    }

    pub(crate) fn plan(&self) -> &Plan {
        &self.plan
    }
}
