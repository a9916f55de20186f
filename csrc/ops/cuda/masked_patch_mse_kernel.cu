// placeholder: CUDA kernel for masked_patch_mse is written next
