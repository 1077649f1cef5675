//! placeholder
use super::{ArgError, Args, ModuleContext, Outcome};
pub fn service(_n: &str, _a: &Args, _c: &ModuleContext) -> Result<Outcome, ArgError> { Ok(Outcome::failed("todo")) }
