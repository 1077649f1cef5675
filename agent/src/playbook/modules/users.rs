//! placeholder
use super::{ArgError, Args, ModuleContext, Outcome};
pub fn user(_a: &Args, _c: &ModuleContext) -> Result<Outcome, ArgError> { Ok(Outcome::failed("todo")) }
pub fn group(_a: &Args, _c: &ModuleContext) -> Result<Outcome, ArgError> { Ok(Outcome::failed("todo")) }
