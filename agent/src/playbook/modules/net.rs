//! placeholder
use super::{ArgError, Args, ModuleContext, Outcome};
pub fn get_url(_a: &Args, _c: &ModuleContext) -> Result<Outcome, ArgError> { Ok(Outcome::failed("todo")) }
pub fn wait_for(_a: &Args, _c: &ModuleContext) -> Result<Outcome, ArgError> { Ok(Outcome::failed("todo")) }
