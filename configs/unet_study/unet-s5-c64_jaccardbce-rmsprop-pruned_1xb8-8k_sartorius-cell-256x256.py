# "Pruned U-Net" of the study: RMSprop + Jaccard-BCE trained with global L1 magnitude pruning, sparsity 0.5 at
# the start rising (polynomial, power 3) to 0.9 at 75 % of the training, masks updated every 100 iterations,
# made permanent at the end. Any other leaf gets the same with this custom_hooks entry.
_base_ = ['./unet-s5-c64_jaccardbce-rmsprop_1xb8-8k_sartorius-cell-256x256.py']
custom_hooks = [
    dict(type='MagnitudePruningHook', start=0.5, end=0.9, interval=100, stop=int(0.75 * _base_.max_iters))
]
