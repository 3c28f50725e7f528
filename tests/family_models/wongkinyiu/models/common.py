"""Forward passes of the yolov7 / YOLOR (paper) layers pickled in the fixtures (test-only, see README.md)."""

import torch
from torch import nn


class ReOrg(nn.Module):
    def forward(self, x):  # (b, c, h, w) -> (b, 4c, h/2, w/2)
        return torch.cat([x[..., ::2, ::2], x[..., 1::2, ::2], x[..., ::2, 1::2], x[..., 1::2, 1::2]], 1)


class Conv(nn.Module):
    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class Concat(nn.Module):
    def forward(self, x):
        return torch.cat(x, self.d)


class DownC(nn.Module):  # yolov7
    def forward(self, x):
        return torch.cat((self.cv2(self.cv1(x)), self.cv3(self.mp(x))), dim=1)


class SPPCSPC(nn.Module):  # yolov7
    def forward(self, x):
        x1 = self.cv4(self.cv3(self.cv1(x)))
        y1 = self.cv6(self.cv5(torch.cat([x1] + [m(x1) for m in self.m], 1)))
        return self.cv7(torch.cat((y1, self.cv2(x)), dim=1))


class ImplicitA(nn.Module):
    def forward(self, x):
        return self.implicit + x


class ImplicitM(nn.Module):
    def forward(self, x):
        return self.implicit * x


class Bottleneck(nn.Module):  # YOLOR paper
    def forward(self, x):
        return x + self.cv2(self.cv1(x)) if self.add else self.cv2(self.cv1(x))


class BottleneckCSPF(nn.Module):  # YOLOR paper
    def forward(self, x):
        return self.cv4(self.act(self.bn(torch.cat((self.m(self.cv1(x)), self.cv2(x)), dim=1))))


class BottleneckCSP2(nn.Module):  # YOLOR paper
    def forward(self, x):
        x1 = self.cv1(x)
        return self.cv3(self.act(self.bn(torch.cat((self.m(x1), self.cv2(x1)), dim=1))))


class SPPCSP(nn.Module):  # YOLOR paper
    def forward(self, x):
        x1 = self.cv4(self.cv3(self.cv1(x)))
        y1 = self.cv6(self.cv5(torch.cat([x1] + [m(x1) for m in self.m], 1)))
        return self.cv7(self.act(self.bn(torch.cat((y1, self.cv2(x)), dim=1))))
