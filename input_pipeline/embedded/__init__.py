"""Real image datasets that ship inside pip packages, as TFDS builders.

They let the main job run offline on a fresh machine: pretrain upstream on
`bit_animal_silhouettes` (10,000 28x28 animal silhouettes, 10 classes), transfer
downstream to `bit_digits` (1,797 8x8 digits, 10 classes). Images are stored as
1-channel PNGs; the `decode` op turns them into 3 channels.

| name                    | train | test  | image      | source package     |
|-------------------------|-------|-------|------------|--------------------|
| bit_animal_silhouettes  | 9,000 | 1,000 | 28x28x1    | animal-mnist 0.4   |
| bit_digits              | 1,297 |   500 | 8x8x1      | scikit-learn       |

Importing this module registers both names with TFDS.
"""
from input_pipeline.embedded.animal_silhouettes import BitAnimalSilhouettes
from input_pipeline.embedded.animal_silhouettes import BitFarmAnimals
from input_pipeline.embedded.animal_silhouettes import BitWildAnimals
from input_pipeline.embedded.digits import BitDigits

BUILDERS = {"bit_animal_silhouettes": BitAnimalSilhouettes,
            "bit_wild_animals": BitWildAnimals,
            "bit_farm_animals": BitFarmAnimals,
            "bit_digits": BitDigits}
