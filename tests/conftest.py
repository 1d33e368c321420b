import torch

# One intra-op thread, as crl's loop uses by default: small MLPs gain little from a second thread and
# lose a lot when another process shares the two cores.
torch.set_num_threads(1)
