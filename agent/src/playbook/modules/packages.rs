//! placeholder
use super::{ArgError, Args, ModuleContext, Outcome};
pub fn apt(_a: &Args, _c: &ModuleContext) -> Result<Outcome, ArgError> { Ok(Outcome::failed("todo")) }
