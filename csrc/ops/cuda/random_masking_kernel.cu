// placeholder: CUDA kernel for random_masking is written next
