"""The field's `networks`: every classifier and GAN network of the library under the names a script expects
(`from networks import ConvNet, get_network`). The definitions live in condensation/networks.py.
"""
from condensation.networks import (AlexNet, BasicBlock, ClassBatchNorm, ConvNet, DIM_CONDITIONINGS,  # noqa: F401
                                   DIM_CRITIC_HEADS, DIM_NETWORKS, DenseLayer, DenseNet, DiMDiscriminator,
                                   DiMGenerator, DiMResNet, GAN_SIZES, LeNet, MLP, NETWORKS, ResNet18,
                                   Transition, VGG11, define_gan, define_model, get_network, init_weights,
                                   instance_norm, resolve_stem)
