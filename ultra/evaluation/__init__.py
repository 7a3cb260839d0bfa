"""The evaluation protocol and its figures.

- ``metrics``: one confusion matrix over a set, Hungarian matching, mIoU and accuracy (torchmetrics).
- ``protocol``: the protocol as a Lightning test loop, its report and pictures.
- ``seeds``: every figure's mean and standard deviation over several seeds.
"""
