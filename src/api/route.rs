//! Parse `/v2/<name>/(manifests|blobs|tags|referrers)/…` once, from the right, so a repository
//! name may have any number of components (including ones called `blobs` or `manifests`).

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route<'a> {
    Base,
    Catalog,
    Tags { name: &'a str },
    Manifest { name: &'a str, reference: &'a str },
    Blob { name: &'a str, digest: &'a str },
    UploadStart { name: &'a str },
    Upload { name: &'a str, id: &'a str },
    Referrers { name: &'a str, digest: &'a str },
    NotFound,
}

impl<'a> Route<'a> {
    /// The repository name the route addresses, if any.
    pub fn name(&self) -> Option<&'a str> {
        match *self {
            Route::Tags { name }
            | Route::Manifest { name, .. }
            | Route::Blob { name, .. }
            | Route::UploadStart { name }
            | Route::Upload { name, .. }
            | Route::Referrers { name, .. } => Some(name),
            Route::Base | Route::Catalog | Route::NotFound => None,
        }
    }

    pub fn parse(path: &'a str) -> Route<'a> {
        let Some(rest) = path.strip_prefix("/v2") else {
            return Route::NotFound;
        };
        if rest.is_empty() || rest == "/" {
            return Route::Base;
        }
        let Some(rest) = rest.strip_prefix('/') else {
            return Route::NotFound;
        };
        if rest == "_catalog" {
            return Route::Catalog;
        }
        // name/<kind>/<last> — split off the last two components (three for uploads).
        let Some((head, last)) = rest.rsplit_once('/') else {
            return Route::NotFound;
        };
        let Some((name, kind)) = head.rsplit_once('/') else {
            return Route::NotFound;
        };
        match (kind, last) {
            ("tags", "list") => return Route::Tags { name },
            ("blobs", "uploads") => return Route::UploadStart { name },
            ("uploads", id) => {
                if let Some(name) = name.strip_suffix("/blobs") {
                    return if id.is_empty() {
                        Route::UploadStart { name }
                    } else {
                        Route::Upload { name, id }
                    };
                }
            }
            _ => {}
        }
        if last.is_empty() {
            return Route::NotFound;
        }
        match kind {
            "manifests" => Route::Manifest {
                name,
                reference: last,
            },
            "blobs" => Route::Blob { name, digest: last },
            "referrers" => Route::Referrers { name, digest: last },
            _ => Route::NotFound,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(Route::parse("/v2/"), Route::Base);
        assert_eq!(Route::parse("/v2"), Route::Base);
        assert_eq!(Route::parse("/v2/_catalog"), Route::Catalog);
        assert_eq!(
            Route::parse("/v2/a/b/c/tags/list"),
            Route::Tags { name: "a/b/c" }
        );
        assert_eq!(
            Route::parse("/v2/blobs/manifests/manifests/v1"),
            Route::Manifest {
                name: "blobs/manifests",
                reference: "v1"
            }
        );
        assert_eq!(
            Route::parse("/v2/x/blobs/uploads/"),
            Route::UploadStart { name: "x" }
        );
        assert_eq!(
            Route::parse("/v2/x/blobs/uploads"),
            Route::UploadStart { name: "x" }
        );
        assert_eq!(
            Route::parse("/v2/x/y/blobs/uploads/abc"),
            Route::Upload {
                name: "x/y",
                id: "abc"
            }
        );
        assert_eq!(
            Route::parse("/v2/x/blobs/sha256:00"),
            Route::Blob {
                name: "x",
                digest: "sha256:00"
            }
        );
        assert_eq!(
            Route::parse("/v2/x/referrers/sha256:00"),
            Route::Referrers {
                name: "x",
                digest: "sha256:00"
            }
        );
        assert_eq!(Route::parse("/v2/x/manifests/"), Route::NotFound);
        assert_eq!(Route::parse("/v3/x"), Route::NotFound);
        assert_eq!(Route::parse("/v2/x"), Route::NotFound);
        assert_eq!(Route::parse("/v2/x/other/y"), Route::NotFound);
    }
}
