"""Named public description sets (``cupl:pets``, ``dclip:imagenet``, ``waffle:cub``, ``abs:dtd``, ``susx:imagenet``).

The registry below is data: each set names its upstream repository, a pinned commit, the file's
path and its sha256. A name resolves to a local file, looked up in this order:

1. ``descriptions_dir`` / ``$ABSCLIP_DESCRIPTIONS_DIR``: a local copy laid out as ``<folder>/<path>``
   (the layout of ``shared/data/descriptions``); the checksum must match, else it is refused;
2. the cache, ``$ABSCLIP_CACHE_DIR/descriptions`` or ``~/.cache/absclip/descriptions`` (same layout);
3. a download from ``raw.githubusercontent.com`` at the pinned commit (or from
   ``$ABSCLIP_DESCRIPTIONS_MIRROR``, a URL with the local layout), checksum-verified and written
   atomically into the cache.

Example::

    >>> from absclip.text.public_sets import resolve
    >>> resolve("abs:dtd")                       # doctest: +SKIP
    PosixPath('/home/me/.cache/absclip/descriptions/abs/dtd/cupl.json')"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from absclip.errors import AbsclipError
from absclip.io.files import atomic_write_bytes, cache_root

log = logging.getLogger(__name__)

ENV_DIR = "ABSCLIP_DESCRIPTIONS_DIR"
ENV_MIRROR = "ABSCLIP_DESCRIPTIONS_MIRROR"
DOWNLOAD_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Source:
    """A public repository that published description files, pinned at one commit."""

    key: str  # the prefix of set names: "cupl"
    repo: str  # GitHub owner/name
    commit: str
    folder: str  # folder under the descriptions dir / cache
    upstream_prefix: str  # prepended to a set's path to get the path inside the repository
    title: str


@dataclass(frozen=True)
class DescriptionSet:
    """One named, checksummed file of a :class:`Source`."""

    name: str  # canonical name, e.g. "cupl:pets" or "abs:dtd/clip-e"
    source: Source
    dataset: str
    variants: tuple[str, ...]  # accepted variant names; "" = the default file of the dataset
    kind: str  # descriptions {class: [sentences]} | descriptors {class: [phrases]} | templates [str]
    path: str  # relative to the source folder
    sha256: str

    @property
    def local_path(self) -> str:
        """Return the path relative to a descriptions dir or the cache: ``<folder>/<path>``."""
        return f"{self.source.folder}/{self.path}"

    @property
    def url(self) -> str:
        """Return the upstream URL at the pinned commit (or the mirror URL when one is set)."""
        mirror = os.environ.get(ENV_MIRROR)
        if mirror:
            return f"{mirror.rstrip('/')}/{self.local_path}"
        return (f"https://raw.githubusercontent.com/{self.source.repo}/{self.source.commit}/"
                f"{self.source.upstream_prefix}{self.path}")


SOURCES: dict[str, Source] = {s.key: s for s in (
    Source("cupl", "sarahpratt/CuPL", "719619c829792ff8f37298266e941b7f077c7f5c", "cupl", "",
           "CuPL GPT-3 descriptions (Pratt et al., ICCV 2023)"),
    Source("dclip", "sachit-menon/classify_by_description_release", "d1a3d8920af89bd0d6a692ed3afeb277df46e082",
           "dclip", "", "DCLIP descriptors (Menon & Vondrick, ICLR 2023)"),
    Source("waffle", "ExplainableML/WaffleCLIP", "7a1b8ee48e31285f62ecd839fecb6b89cbef81f1", "waffleclip", "",
           "WaffleCLIP's copy of the DCLIP descriptors plus cars, aircraft, flowers (Roth et al., ICCV 2023; MIT)"),
    Source("abs", "BIT-DA/ABS", "5ba77c652af789590c0e863517c2291514093d6e", "abs", "prompts/",
           "the ABS paper's files: cupl.json, clip-d.json descriptors, clip-e.json templates (Cai et al., ICML 2025)"),
    Source("susx", "vishaal27/SuS-X", "d7d4d37", "susx_cupl", "",
           "SuS-X's CuPL-style GPT-3 descriptions (Udandarao et al., ICCV 2023)"),
)}

# (source, dataset, variants "|"-separated ("" = default), kind, path inside the source folder, sha256)
_D, _R, _T = "descriptions", "descriptors", "templates"
_ROWS: tuple[tuple[str, str, str, str, str, str], ...] = (
    ("abs", "cub", "|cupl", _D, "cub/cupl.json", "7f2a595332e80720be68ee64e9f32b242dd8acd7d590096903f9fa41bf6f3287"),
    ("abs", "cub", "clip-d", _R, "cub/clip-d.json", "983966040fd8747d89ee9b0f311eeab3b5f4b318e062dd0529c9bb57e2282597"),
    ("abs", "cub", "clip-e", _T, "cub/clip-e.json", "dc272440a937800e58e0dcd9ffd77c8ecaad00e6c585e51b420ffa48cefc60f3"),
    ("abs", "dtd", "|cupl", _D, "dtd/cupl.json", "764191c34e52dabdb1517824a48004172478329b04aa3950104b6f39e3b74cc4"),
    ("abs", "dtd", "clip-d", _R, "dtd/clip-d.json", "3bb97a62ef38ab3daaee15afdd1cacf1ad8706d7c8a92e35c127a9fca9aa1ce4"),
    ("abs", "dtd", "clip-e", _T, "dtd/clip-e.json", "d4f918a2bb9481b7c838c5641b1e45855de3497a531d689902cbb0fd22d081bc"),
    ("abs", "eurosat", "|cupl", _D, "eurosat/cupl.json",
     "cc6eae59c3fa62222299ac457e916f4bdf30714d56ff2eedf7b62dc4b3ae7268"),
    ("abs", "eurosat", "clip-d", _R, "eurosat/clip-d.json",
     "1298f7a9f47e634120d67fbc4eb3c1fbc7c61a4103ad2861d72ed707ef46a867"),
    ("abs", "eurosat", "clip-e", _T, "eurosat/clip-e.json",
     "188f1cda8722cb90ac1d312e94e49025f8207ca5d14cfb77990176afc10bc404"),
    ("abs", "food101", "|cupl", _D, "food101/cupl.json",
     "67cb17f323b7f0726e4b152224365fda289658ff92b0d14ee264910a16af96dc"),
    ("abs", "food101", "clip-d", _R, "food101/clip-d.json",
     "1556bae208439f373fc6a966f43b163f2d1698811ff7f84861635010499a0166"),
    ("abs", "food101", "clip-e", _T, "food101/clip-e.json",
     "31f4a8dd66574f47a60d18d9dc401eebfe7e817339e5171e12712bc3e51c39c9"),
    ("abs", "imagenet", "clip-d", _R, "imagenet/clip-d.json",
     "0c478db8b74046ca185488f252c908420bcea585198c7bceb4e42386cc1f7d3a"),
    ("abs", "imagenet", "clip-e", _T, "imagenet/clip-e.json",
     "9fb52cf92f8f8ee55ff4b6b49414900ee0042a4bcc678b65f01508b3b2b11df9"),
    ("abs", "pets", "|cupl", _D, "oxford_pet/cupl.json",
     "a4c136a8adaf85646d6fc0a1cb7cfd75c12b6da33ef235ad55dd1247138a7e08"),
    ("abs", "pets", "clip-d", _R, "oxford_pet/clip-d.json",
     "70621f48ae4d823624732d26d8f125c4c6d848507878515cff96e935fe872208"),
    ("abs", "pets", "clip-e", _T, "oxford_pet/clip-e.json",
     "c88d1dfb07fa14c37cd6617c908d35a414e3d29f778bc398c18280e22f4dccb4"),
    ("abs", "places365", "|cupl", _D, "place365/cupl.json",
     "8bab6f1daa8a39ba53c5243f1e910cb3559e27e92a700df3dfdc270fd5c9f02f"),
    ("abs", "places365", "clip-d", _R, "place365/clip-d.json",
     "aa35beea77718ef7e9afecf66a0c49b23fcbd4064f3027dc29d6701649c6efd6"),
    ("abs", "places365", "clip-e", _T, "place365/clip-e.json",
     "ddcd1ee582caf857285d464c6c66113bdbec5ce4680635a6a96efb659e4594a4"),
    # CuPL: "full" prompts are the default where they exist; ImageNet has only the base prompts
    ("cupl", "fgvcaircraft", "|full", _D, "all_prompts/full_prompts/airplane_prompts_full.json",
     "d86833c2483c1d12907abeb6198412f1d0a020bd12999a3f170967a7f549e3b8"),
    ("cupl", "fgvcaircraft", "base", _D, "all_prompts/base_prompts/airplane_prompts_base.json",
     "1b7e08f68b57627a0e0658c0af9856bef531fe8134248f57c5f16aabccbeb523"),
    ("cupl", "birdsnap", "|full", _D, "all_prompts/full_prompts/bird_prompts_full.json",
     "830d654a8ad729b7aa211dcf7d6a4dc33b6e0ff68bcb848115faf7c3d12d93b5"),
    ("cupl", "birdsnap", "base", _D, "all_prompts/base_prompts/bird_prompts_base.json",
     "830d654a8ad729b7aa211dcf7d6a4dc33b6e0ff68bcb848115faf7c3d12d93b5"),
    ("cupl", "caltech101", "|full", _D, "all_prompts/full_prompts/cal_prompts_full.json",
     "f0995df6482ae36ec969d7bbdc01fd37ec8724430d6d2369e0043eee1f542834"),
    ("cupl", "caltech101", "base", _D, "all_prompts/base_prompts/cal_prompts_base.json",
     "99aeac054495d5564340b6f8ac922b4dc64156e6aa0429a29c9acca30ba38208"),
    ("cupl", "cars", "|full", _D, "all_prompts/full_prompts/cars_prompts_full.json",
     "10c77fcbd845283b59148e9bf714ec521971a34f0c9e691d46f65c8371d9e52d"),
    ("cupl", "cars", "base", _D, "all_prompts/base_prompts/cars_prompts_base.json",
     "cd0854d7e784a48c93e5e2f3ea910e43f105d2b1270db7394cd86858a3f5ac86"),
    ("cupl", "cifar10", "|full", _D, "all_prompts/full_prompts/cifar10_prompts_full.json",
     "c624136b3e25b016df3f8634e15472d415f85fc425e34471433c5c80a6e1a233"),
    ("cupl", "cifar10", "base", _D, "all_prompts/base_prompts/cifar10_prompts_base.json",
     "a62c5331787a77fdb8ccb7c97d7fbbdd9dbcba5bb0e4c2c553764c657493f08a"),
    ("cupl", "cifar100", "|full", _D, "all_prompts/full_prompts/cifar100_prompts_full.json",
     "cbecac9d1d8a39341a27160d5760f360380e613bdf1317ca4662b495a021c2f2"),
    ("cupl", "cifar100", "base", _D, "all_prompts/base_prompts/cifar100_prompts_base.json",
     "9c51b7b27eee4de8a22c8cbb499a1ad808964798683974d24aad39fb3eaf5a8e"),
    ("cupl", "flowers102", "|full", _D, "all_prompts/full_prompts/flower_prompts_full.json",
     "439e88a1ac5f7058da59d0bcdc4fa848283e4e8f29fc8711ebac4274137a2bbf"),
    ("cupl", "flowers102", "base", _D, "all_prompts/base_prompts/flower_prompts_base.json",
     "4d98c313eae511a74a0973a7350062970291c69a709fe21bdb9df3f45757ec7d"),
    ("cupl", "food101", "|full", _D, "all_prompts/full_prompts/food_prompts_full.json",
     "67cb17f323b7f0726e4b152224365fda289658ff92b0d14ee264910a16af96dc"),
    ("cupl", "food101", "base", _D, "all_prompts/base_prompts/food_prompts_base.json",
     "b75a42ae975592bfd5e5a35af8c4f0dfa0f0f2f7d3cf31b474b95f67260fca1e"),
    ("cupl", "imagenet", "|base", _D, "all_prompts/base_prompts/imagenet_prompts_base.json",
     "f8962ec2a4c4355406eb1b2cf695179f7269c512e130b623444b1a3eb4e3fe2c"),
    ("cupl", "kinetics", "|full", _D, "all_prompts/full_prompts/kinetics_prompts_full.json",
     "746f1f2c1f067baf0b8c163d74490f26982e9aba008da2c75d76c05910e4f2d0"),
    ("cupl", "kinetics", "base", _D, "all_prompts/base_prompts/kinetics_prompts_base.json",
     "e7021386022b26fe34141bf151589abdb13ddb984ff198e304a34284a5fb1a09"),
    ("cupl", "pets", "|full", _D, "all_prompts/full_prompts/pets_prompts_full.json",
     "b53cbe7f37e807c13a3f02e511c6058e6a50bafea3f8c4363cb85bf32920c6c6"),
    ("cupl", "pets", "base", _D, "all_prompts/base_prompts/pet_prompts_base.json",
     "a4c136a8adaf85646d6fc0a1cb7cfd75c12b6da33ef235ad55dd1247138a7e08"),
    ("cupl", "resisc45", "|full", _D, "all_prompts/full_prompts/res45_prompts_full.json",
     "c63269cd327f6c2c9015bdee1bcec1ad2a1a1da22bf596754b246a2f90c8351b"),
    ("cupl", "resisc45", "base", _D, "all_prompts/base_prompts/res45_prompts_base.json",
     "5f52004285671efc94d9ca4b8e898ec0c0e4d21929fc39c75bc99b9343f96da9"),
    ("cupl", "sun397", "|full", _D, "all_prompts/full_prompts/sun_prompts_full.json",
     "e6b1a95febe8e9420799fcf3be6647a73dc1aa9a6a9ac100d264c3ff78faf011"),
    ("cupl", "sun397", "base", _D, "all_prompts/base_prompts/sun_prompts_base.json",
     "9700c0ebfe122bf0972d1707a22307aa6153df50c414e3b675633d465aefca59"),
    ("cupl", "dtd", "|full", _D, "all_prompts/full_prompts/texture_prompts_full.json",
     "dabdcafded7babd67046d0f90abeb510b648bdaaf397b884f265f3460a7942a9"),
    ("cupl", "dtd", "base", _D, "all_prompts/base_prompts/texture_prompts_base.json",
     "7d55451f1c038a9b4b80a5d339e3c5f7dcd7194a8a51b5608f343b5079b76ea8"),
    ("cupl", "ucf101", "|full", _D, "all_prompts/full_prompts/ucf_prompts_full.json",
     "8f2b130ee0c7573c3f0d4a6353c9bdda64ea63b771155207befa579f2a35c985"),
    ("cupl", "ucf101", "base", _D, "all_prompts/base_prompts/ucf_prompts_base.json",
     "5cf5ff16e0ff37305c9fbf078170ab7e165437936ed54297fad5a309cef72f12"),
    ("dclip", "cub", "", _R, "descriptors/descriptors_cub.json",
     "983966040fd8747d89ee9b0f311eeab3b5f4b318e062dd0529c9bb57e2282597"),
    ("dclip", "dtd", "", _R, "descriptors/descriptors_dtd.json",
     "3bb97a62ef38ab3daaee15afdd1cacf1ad8706d7c8a92e35c127a9fca9aa1ce4"),
    ("dclip", "eurosat", "", _R, "descriptors/descriptors_eurosat.json",
     "1298f7a9f47e634120d67fbc4eb3c1fbc7c61a4103ad2861d72ed707ef46a867"),
    ("dclip", "food101", "", _R, "descriptors/descriptors_food101.json",
     "b7393ceb850bd4f0d4a06ef3a30bb81cb41fd3a43e2a0adccf9e95a903a65d91"),
    ("dclip", "imagenet", "", _R, "descriptors/descriptors_imagenet.json",
     "0c478db8b74046ca185488f252c908420bcea585198c7bceb4e42386cc1f7d3a"),
    ("dclip", "pets", "", _R, "descriptors/descriptors_pets.json",
     "3e9b003047b66210920c699678a84f481e4f2a196e40020b0cd0dd595bc441c4"),
    ("dclip", "places365", "", _R, "descriptors/descriptors_places365.json",
     "967bcd3166018f6b6b94f99e7dd9889bfa38386035010f10abe2936fd44aff9f"),
    ("waffle", "cars", "", _R, "descriptors/descriptors_cars.json",
     "05d7318627268ee73748bd0821595e065d5f91e67539af64d00ceee699e6341f"),
    ("waffle", "cub", "", _R, "descriptors/descriptors_cub.json",
     "983966040fd8747d89ee9b0f311eeab3b5f4b318e062dd0529c9bb57e2282597"),
    ("waffle", "dtd", "", _R, "descriptors/descriptors_dtd.json",
     "3bb97a62ef38ab3daaee15afdd1cacf1ad8706d7c8a92e35c127a9fca9aa1ce4"),
    ("waffle", "eurosat", "", _R, "descriptors/descriptors_eurosat.json",
     "1298f7a9f47e634120d67fbc4eb3c1fbc7c61a4103ad2861d72ed707ef46a867"),
    ("waffle", "fgvcaircraft", "", _R, "descriptors/descriptors_fgvcaircraft.json",
     "047caebb1f91735b00d50531e18828c37164be7acfa7a03ffe7d8f95cc8ac48c"),
    ("waffle", "flowers102", "", _R, "descriptors/descriptors_flowers102.json",
     "e8fcccba2091def03b778c9cf424ca6f77f1e70826bcf93b3e8d7042ccbc622a"),
    ("waffle", "food101", "", _R, "descriptors/descriptors_food101.json",
     "b7393ceb850bd4f0d4a06ef3a30bb81cb41fd3a43e2a0adccf9e95a903a65d91"),
    ("waffle", "imagenet", "", _R, "descriptors/descriptors_imagenet.json",
     "0c478db8b74046ca185488f252c908420bcea585198c7bceb4e42386cc1f7d3a"),
    ("waffle", "pets", "", _R, "descriptors/descriptors_pets.json",
     "3e9b003047b66210920c699678a84f481e4f2a196e40020b0cd0dd595bc441c4"),
    ("waffle", "places365", "", _R, "descriptors/descriptors_places365.json",
     "967bcd3166018f6b6b94f99e7dd9889bfa38386035010f10abe2936fd44aff9f"),
    ("susx", "birdsnap", "", _D, "gpt3_prompts/CuPL_prompts_birdsnap.json",
     "6bac1f730bc6c69ac3fc1ef618c90257d990b7e0a4306e6512f1759907bf6bd9"),
    ("susx", "caltech101", "", _D, "gpt3_prompts/CuPL_prompts_caltech101.json",
     "b5c3f52be95a1e450c4ebbac1fd0d2644a5d2efc2bac15e1a82cad587fdd09f6"),
    ("susx", "caltech256", "", _D, "gpt3_prompts/CuPL_prompts_caltech256.json",
     "7fdb0f1ee167839d6ff783407c78be88ecaa5752bb35777fa0946ad4691b0da3"),
    ("susx", "cifar10", "", _D, "gpt3_prompts/CuPL_prompts_cifar10.json",
     "a2d39bf5c0f83cf11e87ab09ee21903cb0753e8fcd2b1b512c9035a5660d7aab"),
    ("susx", "cifar100", "", _D, "gpt3_prompts/CuPL_prompts_cifar100.json",
     "5c861e587e8cb7d2a45d704aa705a0709eeabab05082a36ec2c8acfcfa110f05"),
    ("susx", "country211", "", _D, "gpt3_prompts/CuPL_prompts_country211.json",
     "95ce43795a48e213cf5c621a2011623d5adfa54ca2915c27ba3371b52e9306e8"),
    ("susx", "cub", "", _D, "gpt3_prompts/CuPL_prompts_cub.json",
     "8947223c9ca0408d1851693a7be78abc0bbe7faa536d7ade36fff0bb40fef925"),
    ("susx", "dtd", "", _D, "gpt3_prompts/CuPL_prompts_dtd.json",
     "b5d2ae76c1e8e5ded0df87d70aa60ce78730060ae65d7b36c30034457b8cfbe8"),
    ("susx", "eurosat", "", _D, "gpt3_prompts/CuPL_prompts_eurosat.json",
     "c1831f13dff8f8f2b6e3121b122b4e40582ccc1274537c3f9023641d35d07234"),
    ("susx", "fgvcaircraft", "", _D, "gpt3_prompts/CuPL_prompts_fgvcaircraft.json",
     "3d0733867fa1e30a229639df9528d9da3fe11b9cf56c0cd6eda11688d9a31393"),
    ("susx", "flowers102", "", _D, "gpt3_prompts/CuPL_prompts_flowers102.json",
     "904c8850eafeaa1cc60a0f55fab7bdc168af4b2d1e5cb5bd06c5d32cbbc9d676"),
    ("susx", "food101", "", _D, "gpt3_prompts/CuPL_prompts_food101.json",
     "0aed280ca518c37abec6b1c85a6093b8f9993988df1581bda59805b541694735"),
    ("susx", "imagenet", "", _D, "gpt3_prompts/CuPL_prompts_imagenet.json",
     "ab8edaa47cb8050ee48c673e38022cbc5522f404bd16a74debb5c7e260869e77"),
    ("susx", "imagenet-r", "", _D, "gpt3_prompts/CuPL_prompts_imagenet-r.json",
     "0bbbb6c08f933b746caf65c71075d55659c5b36463edfdfdb95a6c89f700d5c6"),
    ("susx", "imagenet-sketch", "", _D, "gpt3_prompts/CuPL_prompts_imagenet-sketch.json",
     "85195d2b04a7e58406c1c1ba63b4ebbd7b4cc09b19fe6383271ac8370e0805eb"),
    ("susx", "pets", "", _D, "gpt3_prompts/CuPL_prompts_oxfordpets.json",
     "f393a01f911ceed70458d1b7fa3b8f2df2148732210b3783488f2efecc672c95"),
    ("susx", "cars", "", _D, "gpt3_prompts/CuPL_prompts_stanfordcars.json",
     "8b84424728b57442cbe190b0d996fda7a16fbb8ac42617911c61fea8f1496a53"),
    ("susx", "sun397", "", _D, "gpt3_prompts/CuPL_prompts_sun397.json",
     "b6e2c68f1cfaad78a725de1aea337cea8f5481402708225bcecbe8ce8b436967"),
    ("susx", "ucf101", "", _D, "gpt3_prompts/CuPL_prompts_ucf101.json",
     "f685a1d6e8b1316a4f70554d2913c9fb58050af80c96004e6c7b40515488f9e4"),
)

# Other spellings of the data set part of a name (compared lower case, without "-", "_" or spaces).
# The upstream file names are among them, so "cupl:texture" and "abs:oxford_pet" work too.
DATASET_ALIASES: dict[str, tuple[str, ...]] = {
    "pets": ("pet", "oxfordpet", "oxfordpets", "oxfordiiitpet"),
    "dtd": ("texture", "textures", "describabletextures"),
    "food101": ("food",),
    "places365": ("place365", "places"),
    "flowers102": ("flower", "flowers", "oxfordflowers102"),
    "fgvcaircraft": ("airplane", "aircraft"),
    "cars": ("stanfordcars", "car"),
    "caltech101": ("cal",),
    "sun397": ("sun",),
    "birdsnap": ("bird",),
    "resisc45": ("res45",),
    "ucf101": ("ucf",),
    "cub": ("cub200", "cub2002011"),
    "imagenet": ("imagenet1k", "ilsvrc2012"),
}


def _norm(text: str) -> str:
    return re.sub(r"[\s_\-]+", "", text).lower()


def _build() -> tuple[list[DescriptionSet], dict[tuple[str, str, str], DescriptionSet]]:
    sets: list[DescriptionSet] = []
    index: dict[tuple[str, str, str], DescriptionSet] = {}
    for src, dataset, variants, kind, path, sha in _ROWS:
        vs = tuple(variants.split("|"))
        name = f"{src}:{dataset}" + (f"/{vs[0]}" if vs[0] else "")
        entry = DescriptionSet(name, SOURCES[src], dataset, vs, kind, path, sha)
        sets.append(entry)
        for v in vs:
            index[(src, _norm(dataset), v)] = entry
    return sets, index


_SETS, _INDEX = _build()
_ALIAS_TO_DATASET = {_norm(a): _norm(k) for k, aliases in DATASET_ALIASES.items() for a in aliases}
_SPEC_RE = re.compile(r"^(?P<source>[a-z]+):(?P<dataset>[^/\\:]+)(?:/(?P<variant>[^/\\:]+))?$")


def list_sets(source: str | None = None) -> list[DescriptionSet]:
    """Return the known description sets (all, or those of one source such as ``"cupl"``)."""
    return [s for s in _SETS if source is None or s.source.key == source]


def is_set_spec(text: str) -> bool:
    """Return True when ``text`` looks like a named set (``<source>:<dataset>[/<variant>]`` with a known source)."""
    m = _SPEC_RE.match(text.strip())
    return bool(m) and m.group("source") in SOURCES


def get_set(spec: str) -> DescriptionSet:
    """Return the registry entry for ``spec`` (e.g. ``"cupl:pets"``, ``"abs:dtd/clip-e"``, ``"cupl:texture"``).

    Raises:
        AbsclipError: unknown source or set; the message lists the known names.
    """
    m = _SPEC_RE.match(spec.strip())
    if not m or m.group("source") not in SOURCES:
        raise AbsclipError(f"{spec!r} is not a description set name; known sources: "
                           f"{', '.join(SOURCES)} (e.g. cupl:pets, abs:dtd/clip-e).")
    src = m.group("source")
    ds = _norm(m.group("dataset"))
    ds = _ALIAS_TO_DATASET.get(ds, ds)
    variant = (m.group("variant") or "").strip().lower()
    entry = _INDEX.get((src, ds, variant))
    if entry is None:
        names = ", ".join(s.name for s in list_sets(src))
        raise AbsclipError(f"Unknown description set {spec!r}; known {src} sets: {names} "
                           "(run 'absclip descriptions list').")
    return entry


def default_cache_dir() -> Path:
    """Return the download cache: ``$ABSCLIP_CACHE_DIR/descriptions`` or ``~/.cache/absclip/descriptions``."""
    return cache_root() / "descriptions"


def local_dir(descriptions_dir: str | os.PathLike | None = None) -> Path | None:
    """Return the local copy folder: ``descriptions_dir`` or ``$ABSCLIP_DESCRIPTIONS_DIR`` (None if neither).

    Raises:
        AbsclipError: the folder is named but does not exist.
    """
    raw = descriptions_dir if descriptions_dir is not None else os.environ.get(ENV_DIR)
    if not raw:
        return None
    p = Path(raw).expanduser()
    if not p.is_dir():
        what = "`descriptions_dir`" if descriptions_dir is not None else ENV_DIR
        raise AbsclipError(f"{what} points at {p}, which is not a directory.")
    return p


_VERIFIED: dict[tuple[str, int, int], str] = {}


def file_sha256(path: Path) -> str:
    """Return the hex sha256 of a file (memoised on path, size and mtime)."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _VERIFIED:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _VERIFIED[key] = h.hexdigest()
    return _VERIFIED[key]


def status(entry: DescriptionSet, descriptions_dir: str | os.PathLike | None = None,
           cache_dir: str | os.PathLike | None = None) -> tuple[str, Path | None]:
    """Return ``(state, path)``: state is ``local``, ``cached``, ``local-mismatch``, ``cached-mismatch`` or ``missing``.

    ``local`` and ``cached`` mean a file with the recorded checksum exists at ``path``.
    """
    seen_bad: tuple[str, Path] | None = None
    base = local_dir(descriptions_dir)
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    for state, root in (("local", base), ("cached", cache)):
        if root is None:
            continue
        p = root / entry.local_path
        if p.is_file():
            if file_sha256(p) == entry.sha256:
                return state, p
            seen_bad = seen_bad or (f"{state}-mismatch", p)
    return seen_bad if seen_bad else ("missing", None)


def resolve(spec: str, *, descriptions_dir: str | os.PathLike | None = None,
            cache_dir: str | os.PathLike | None = None, download: bool = True) -> Path:
    """Return the path of a verified local file for the named set, downloading it into the cache if needed.

    Args:
        spec: a set name such as ``"cupl:pets"``, ``"dclip:imagenet"``, ``"abs:dtd/clip-d"``.
        descriptions_dir: local copy (layout ``<folder>/<path>``); default ``$ABSCLIP_DESCRIPTIONS_DIR``.
        cache_dir: download cache; default ``$ABSCLIP_CACHE_DIR/descriptions`` or ``~/.cache/absclip/descriptions``.
        download: allow a download when the file is neither local nor cached.

    Raises:
        AbsclipError: unknown name; a local copy with a wrong checksum; a failed or corrupt download.
    """
    entry = get_set(spec)
    base = local_dir(descriptions_dir)
    if base is not None:
        p = base / entry.local_path
        if p.is_file():
            got = file_sha256(p)
            if got != entry.sha256:
                raise AbsclipError(f"The local copy {p} of {entry.name} does not match its recorded sha256 "
                                   f"(expected {entry.sha256[:12]}…, got {got[:12]}…); restore the original file "
                                   f"or point {ENV_DIR} elsewhere.")
            return p
        log.debug("%s is not in %s; trying the cache.", entry.name, base)
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    target = cache / entry.local_path
    if target.is_file():
        if file_sha256(target) == entry.sha256:
            return target
        log.warning("The cached %s (%s) does not match its checksum; downloading it again.", entry.name, target)
    where = f"{base / entry.local_path} or in the cache" if base is not None else "the cache"
    if not download:
        raise AbsclipError(f"{entry.name} is not in {where} ({target}) and downloads are off; set {ENV_DIR} to a "
                           f"folder that holds {entry.local_path}.")
    _download(entry, target, where)
    return target


def _download(entry: DescriptionSet, target: Path, where: str) -> None:
    url = entry.url
    log.info("Downloading %s from %s", entry.name, url)
    from absclip._version import __version__

    req = urllib.request.Request(url, headers={"User-Agent": f"absclip/{__version__}"})
    try:
        with urllib.request.urlopen(req, timeout=DOWNLOAD_TIMEOUT_S) as resp:
            data = resp.read()
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", None) or e
        raise AbsclipError(f"Could not download {entry.name} from {url} ({reason}) and it is not in {where}; on "
                           f"an offline machine set {ENV_DIR} to a folder that holds {entry.local_path}.") from e
    got = hashlib.sha256(data).hexdigest()
    if got != entry.sha256:
        raise AbsclipError(f"The download of {entry.name} from {url} does not match its recorded sha256 (expected "
                           f"{entry.sha256[:12]}…, got {got[:12]}…); refusing to use it.")
    try:
        atomic_write_bytes(target, data)
    except OSError as e:
        raise AbsclipError(f"Could not write {target} ({e.strerror}); set ABSCLIP_CACHE_DIR to a writable "
                           "folder.") from e
