# SEM paper depth ablation (its Table 3): CNN1 = 1 conv block(s) + softmax, no hidden FC.
_base_ = ['./sem-cnn5-fc40_sgd-300it_sartorius-tiles-128.py']
model = dict(num_blocks=1, fc_hidden=None)
