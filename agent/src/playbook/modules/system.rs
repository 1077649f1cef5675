//! placeholder
use super::{ArgError, Args, ModuleContext, Outcome};
pub fn cron(_a: &Args, _c: &ModuleContext) -> Result<Outcome, ArgError> { Ok(Outcome::failed("todo")) }
pub fn authorized_key(_a: &Args, _c: &ModuleContext) -> Result<Outcome, ArgError> { Ok(Outcome::failed("todo")) }
pub fn sysctl(_a: &Args, _c: &ModuleContext) -> Result<Outcome, ArgError> { Ok(Outcome::failed("todo")) }
pub fn hostname(_a: &Args, _c: &ModuleContext) -> Result<Outcome, ArgError> { Ok(Outcome::failed("todo")) }
