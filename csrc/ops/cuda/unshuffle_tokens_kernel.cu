// placeholder: CUDA kernel for unshuffle_tokens is written next
