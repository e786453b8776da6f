//! Typed access to a node's attributes, refusing any attribute the operator's mapping
//! does not read (an attribute silently ignored would be a silent mis-import).

use crate::error::OnnxError;
use crate::proto::attribute_proto::AttributeType;
use crate::proto::{AttributeProto, NodeProto, TensorProto};

/// The attributes of one node, with errors that name the node and its operator.
pub(crate) struct Attrs<'a> {
    node: &'a NodeProto,
    name: &'a str,
}

impl<'a> Attrs<'a> {
    /// Checks that every attribute present is one of `known`.
    pub fn new(node: &'a NodeProto, name: &'a str, known: &[&str]) -> Result<Self, OnnxError> {
        let attrs = Self { node, name };
        if let Some(a) = node
            .attribute
            .iter()
            .find(|a| !known.contains(&a.name.as_str()))
        {
            let supported = if known.is_empty() {
                "none".to_owned()
            } else {
                known.join(", ")
            };
            return Err(attrs.error(format!(
                "attribute `{}` is not supported (supported: {supported})",
                a.name
            )));
        }
        Ok(attrs)
    }

    /// An error about this node.
    pub fn error(&self, message: String) -> OnnxError {
        OnnxError::Node {
            node: self.name.to_owned(),
            op_type: self.node.op_type.clone(),
            message,
        }
    }

    fn get(
        &self,
        name: &str,
        kind: AttributeType,
    ) -> Result<Option<&'a AttributeProto>, OnnxError> {
        let Some(a) = self.node.attribute.iter().find(|a| a.name == name) else {
            return Ok(None);
        };
        if a.r#type != kind as i32 {
            return Err(self.error(format!(
                "attribute `{name}` has type {}, expected {kind:?}",
                a.r#type
            )));
        }
        Ok(Some(a))
    }

    pub fn int(&self, name: &str, default: i64) -> Result<i64, OnnxError> {
        Ok(self.get(name, AttributeType::Int)?.map_or(default, |a| a.i))
    }

    pub fn float(&self, name: &str, default: f32) -> Result<f32, OnnxError> {
        Ok(self
            .get(name, AttributeType::Float)?
            .map_or(default, |a| a.f))
    }

    pub fn ints(&self, name: &str) -> Result<Option<&'a [i64]>, OnnxError> {
        Ok(self
            .get(name, AttributeType::Ints)?
            .map(|a| a.ints.as_slice()))
    }

    pub fn string(&self, name: &str, default: &str) -> Result<String, OnnxError> {
        Ok(self.get(name, AttributeType::String)?.map_or_else(
            || default.to_owned(),
            |a| String::from_utf8_lossy(&a.s).into_owned(),
        ))
    }

    pub fn tensor(&self, name: &str) -> Result<Option<&'a TensorProto>, OnnxError> {
        Ok(self
            .get(name, AttributeType::Tensor)?
            .and_then(|a| a.t.as_ref()))
    }

    /// An integer attribute that must equal `only` (a feature the importer does not map).
    pub fn require(&self, name: &str, default: i64, only: i64) -> Result<(), OnnxError> {
        let value = self.int(name, default)?;
        if value != only {
            return Err(self.error(format!(
                "{name} = {value} is not supported (only {name} = {only})"
            )));
        }
        Ok(())
    }
}
