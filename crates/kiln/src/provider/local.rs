//! The `local` provider: kiln's own scratch resources on this host.
//!
//! Owns the removal of journaled `dir` and `file` resources (run scratch directories, keys,
//! partial outputs) and the bookkeeping of `port` reservations. It launches nothing.

use std::path::Path;

use async_trait::async_trait;

use super::{LaunchRequest, Machine, Provider, ProviderError, Resources};
use crate::journal::Resource;

pub const NAME: &str = "local";

#[derive(Debug)]
pub struct LocalProvider;

#[async_trait]
impl Provider for LocalProvider {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn launch(
        &self,
        _req: &LaunchRequest<'_>,
        _res: &Resources,
    ) -> Result<Box<dyn Machine>, ProviderError> {
        Err(ProviderError::NotSupported {
            provider: NAME.into(),
            what: "launching machines".into(),
        })
    }

    async fn destroy(&self, resource: &Resource) -> Result<(), ProviderError> {
        let path = Path::new(&resource.id);
        let result = match resource.kind.as_str() {
            "dir" => std::fs::remove_dir_all(path),
            "file" => std::fs::remove_file(path),
            // A port reservation ends with the process that held it.
            "port" => Ok(()),
            other => {
                return Err(ProviderError::NotSupported {
                    provider: NAME.into(),
                    what: format!("removing resources of kind `{other}`"),
                });
            }
        };
        match result {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(ProviderError::io(
                NAME,
                format!("remove {}", path.display()),
                e,
            )),
        }
    }

    async fn exists(&self, resource: &Resource) -> Result<bool, ProviderError> {
        Ok(match resource.kind.as_str() {
            "dir" | "file" => Path::new(&resource.id).exists(),
            _ => false,
        })
    }
}
