// placeholder: CUDA kernel for patchify_gather is written next
