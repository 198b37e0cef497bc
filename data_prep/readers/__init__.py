"""Readers: one module per source layout, each returning a data_prep.dataset.Dataset."""
from .cifar10 import read_cifar10, read_cifar10_binary, read_cifar10_python
from .digits import read_digits
from .images import detect_channels, read_image_folder, read_image_list, read_image_lists, read_image_sets, set_folders
from .inshop import read_inshop

__all__ = ['detect_channels', 'read_cifar10', 'read_cifar10_binary', 'read_cifar10_python', 'read_digits', 'read_image_folder',
           'read_image_list', 'read_image_lists', 'read_image_sets', 'read_inshop', 'set_folders']
