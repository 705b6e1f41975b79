"""Fixed word lists for RULER's keys, values and word lists, so that generation stays offline.

RULER draws them from the ``wonderwords`` package (its noun, adjective and verb lists: NIAH keys are
``adjective-noun`` pairs, CWE samples single words, falling back to a larger English word list when
a length needs more distinct words than it has); ``wonderwords`` is not a dependency here and
nothing is downloaded, so these hand-written lists stand in for it. The same seed therefore gives
other words than RULER's, never another format.
"""

from __future__ import annotations

ADJECTIVES = """
able absent abundant acidic adorable afraid agile alert alive amber ample ancient angry anxious
arctic ashen awake aware awkward bald barren basic bitter bland blank bleak blind blond blue blunt
bold bony bored bouncy brave breezy brief bright brisk broad broken bronze brown bumpy busy calm
candid careful casual cheap cheerful chilly chubby civil clean clear clever cloudy clumsy coarse
cold common cosmic costly cozy crafty crazy creamy crisp crooked crowded cruel curious curly cute
damp dapper daring dark dear decent deep dense dizzy dull dusty eager early earthy easy elastic
elder elegant empty endless epic equal exact fabled faint fair faithful famous fancy far fast
fearless feeble fierce filthy fine firm fixed flaky flat fluffy foggy fond formal fragile frail
frank free fresh friendly frosty frozen funny fuzzy gentle giant giddy gifted glad glassy gloomy
glossy golden good graceful grand grassy grateful greasy great greedy green grim grumpy guilty
hairy handy happy hardy harsh hasty healthy hearty heavy hidden hollow homely honest hopeful huge
humble humid hungry icy idle immense jagged jolly juicy keen kind lame large late lazy leafy lean
level light likely limp little lively lone long loose loud lovely loyal lucky lush magic major
mellow merry messy mighty mild misty modern modest moist muddy murky mute narrow nasty neat needy
nervous new nice nimble noble noisy normal numb odd oily old open orange ornate pale patient
peaceful perfect petite plain pleasant plump polite poor proud purple quaint quick quiet rapid rare
raw ready regal rich rigid ripe robust rocky rosy rough round royal rude rusty sacred salty sandy
scarce secret shaggy shallow sharp shiny short shy silent silky silly simple sleek sleepy slim
slow small smart smooth snowy soft solid sour spare spicy spotty steady steep sticky stiff stormy
strange strict strong sturdy subtle sunny super sweet swift tall tame tart tender thick thin
thirsty tidy tiny tough tricky true twin ugly unique upbeat urban vague valid vast velvet vivid
warm wary weak weary wet whole wicked wide wild windy wise witty wooden worthy young zany zealous
""".split()

NOUNS = """
acorn actor airport album alley almond anchor angle ankle anthem apple apron arch arena armor
arrow artist atlas attic aunt avenue axle badge bagel bakery balcony ballet bamboo banana bandit
banjo banner barn barrel basket beach beacon beaver bell belt bench berry bicycle bishop blanket
blossom boat bonnet book boot bottle boulder bow bracelet branch bread brick bridge broom brook
bubble bucket buffalo bugle bundle butter button cabin cactus cake camel camera canal candle
canoe canyon captain carpet carrot castle cattle cave cedar cellar chair chalk channel cheese
cherry chest chimney circus citizen clock cloud clover coast cobra coconut coffee comet compass
copper coral cotton cottage cougar county cousin cradle crayon cricket crown crystal cup curtain
cushion daisy dancer desert diamond dinner doctor dolphin donkey dragon drawer dream drum eagle
earth elbow elephant ember engine falcon farmer feather fence ferry fiddle field finger fire
flag flower flute forest fossil fountain fox frog garden garlic garnet geyser ghost giraffe
glacier glove goat goose grape gravel guitar hammer harbor harp hawk hazel helmet hermit heron
hill honey horizon horse hotel island ivory jacket jaguar jelly jewel journal judge jungle
kettle kingdom kitten knight ladder lagoon lake lamp lantern lemon leopard letter library lily
lion lizard lobster locket lotus magnet mango maple marble market meadow melody mirror monkey
moon mountain mouse museum needle nest noodle novel oak ocean olive onion orchard otter owl
oyster paddle palace panda panther paper parade parrot pasta peach peanut pearl pebble pelican
pencil pepper piano pigeon pillow pilot pine planet plum pocket poet pond potato prairie puppet
pyramid quilt rabbit raccoon radio rainbow raven reef ribbon river robin rocket saddle sailor
salmon sandal scarf school scroll shadow shell shield shovel silver singer sister skate sled
snail sparrow spider spoon squirrel stable statue stone storm stove stream sugar summit sunset
swan sword table teacher temple tiger timber tomato tower tractor trail train treasure trumpet
tulip tunnel turtle umbrella valley vessel village violin volcano wagon walnut wave whale wheat
whistle willow window wizard wolf yacht zebra
""".split()

VERBS = """
accept admire adopt advise agree allow amuse appear argue arrange arrive attach attend bake
balance bathe begin behave belong bless boast borrow bounce breathe build calculate carry carve
celebrate chase cheer chew clap climb collect compare complain count crawl create dance decide
deliver describe destroy discover divide drift drive earn embrace enjoy escape examine explain
explore fetch float fold follow forgive gather glide grab greet grow guard guess hammer handle
harvest hatch hover hunt hurry identify ignore imagine improve inform invent invite juggle kneel
knit laugh launch learn listen marry measure melt mend migrate mumble nod notice obey observe
offer open order paint pause perform pinch plant please polish pour pray preach promise protect
pull punish question quiver rescue retire rinse roar scatter scribble search settle shiver shout
signal skip sneeze solve sparkle splash spray squeeze stitch stretch surprise swim tease thank
travel tremble trust twist unlock vanish wander whisper wiggle wonder wrestle yawn yell zoom
""".split()

# NIAH keys: every adjective-noun pair, sorted, as RULER builds its key list from wonderwords.
KEY_WORDS = sorted({f"{a}-{n}" for a in ADJECTIVES for n in NOUNS})



def _no_inner_words(words) -> list[str]:
    """The words that occur inside no other word of the list (drops 'old' for 'bold'), sorted."""
    unique = sorted(set(words))
    return [w for w in unique if not any(w != o and w in o for o in unique)]


# CWE words: RULER's noun + adjective + verb lists, deduplicated and sorted (shuffled per seed by the
# task). Words inside other words are left out: RULER scores by substring, and 'old' would be
# credited by 'bold'. Lengths that need more distinct words fall back to adjective-noun pairs of
# these words, none inside another either.
SINGLE_WORDS = _no_inner_words(NOUNS + ADJECTIVES + VERBS)
_PLAIN = set(SINGLE_WORDS)
PAIR_WORDS = sorted(f"{a}-{n}" for a in ADJECTIVES for n in NOUNS if a in _PLAIN and n in _PLAIN)
