import torch

from frcnn.model.fpn import FPN


def test_fpn_levels_and_p6_subsampling():
    fpn = FPN([64, 128, 256, 512], 32)
    features = [
        torch.randn(1, c, 100 // s, 100 // s)
        for c, s in zip([64, 128, 256, 512], [4, 8, 16, 32], strict=True)
    ]
    pyramid = fpn(features)
    assert [tuple(p.shape[1:]) for p in pyramid] == [
        (32, 25, 25),
        (32, 12, 12),
        (32, 6, 6),
        (32, 3, 3),
        (32, 2, 2),
    ]
    torch.testing.assert_close(pyramid[4], pyramid[3][:, :, ::2, ::2])
