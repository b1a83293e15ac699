-- wrk script for bench/run.sh: every request PUTs a new small OCI manifest (its own tag
-- t<thread>-<n>, an annotation that makes its digest unique) whose config and layer blobs are
-- already in the repository. Env: PUT_REPO, CONFIG_DIGEST, CONFIG_SIZE, LAYER_DIGEST, LAYER_SIZE.
local repo = os.getenv("PUT_REPO")
local template = '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",'
    .. '"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"'
    .. os.getenv("CONFIG_DIGEST") .. '","size":' .. os.getenv("CONFIG_SIZE") .. '},'
    .. '"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"'
    .. os.getenv("LAYER_DIGEST") .. '","size":' .. os.getenv("LAYER_SIZE") .. '}],'
    .. '"annotations":{"n":"%s"}}'
local headers = { ["Content-Type"] = "application/vnd.oci.image.manifest.v1+json" }
local threads = 0
local counter = 0

function setup(thread)
    threads = threads + 1
    thread:set("id", threads)
end

function request()
    counter = counter + 1
    local name = string.format("t%d-%d", id, counter)
    return wrk.format("PUT", "/v2/" .. repo .. "/manifests/" .. name, headers,
        string.format(template, name))
end
