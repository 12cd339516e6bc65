# SEM paper depth ablation (its Table 3): CNN4 = 4 conv block(s) + softmax, no hidden FC.
_base_ = ['./sem-cnn5-fc40_sgd-300it_sartorius-tiles-128.py']
model = dict(num_blocks=4, fc_hidden=None)
